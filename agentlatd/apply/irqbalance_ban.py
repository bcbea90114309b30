"""The irqbalance.banned_cpus knob: CPUs irqbalance must not place IRQs on,
set through irqbalance's own socket while agentlatd runs.

irqbalance (1.8+, built with its UI, as Debian, Ubuntu, Fedora and RHEL ship
it) listens on run/irqbalance/irqbalance<PID>.sock (irqbalance.c
init_socket(); an abstract "irqbalance-ui" socket when run/irqbalance is not
writable). sock_handle() takes one command per connection from a root peer
(it checks SCM_CREDENTIALS, which the kernel attaches because the socket has
SO_PASSCRED):
  "setup"                 answers "SLEEP <s> [IRQ <n> LOAD .. DIFF .. CLASS .. ]... BANNED <mask>"
                          (BANNED: the hex cpumask of every banned CPU, as
                          cpumask_scnprintf prints it: "00000000,0000000c")
  "settings cpus <list>"  replaces the UI's banned CPU list ("NULL": none) and
                          sets need_rescan: the ban takes effect at irqbalance's
                          next pass (within its sleep interval, 10 s by default)
  "settings ban irqs <n n ..>"  replaces the list of banned IRQs (cl_banned_irqs:
                          the --banirq ones too; "NONE": empty) and sets
                          need_rescan; at the rescan classify.c marks them
                          IRQ_FLAG_BANNED and irqbalance never writes their
                          affinity again. Parsed with a strtoul() loop that
                          stops at a 0, so the numbers are space-separated and
                          IRQ 0 cannot be listed. The setup answer lists them
                          ("IRQ <n> LOAD .. DIFF .. CLASS .."), so the original
                          is read as for the CPUs.
sock_handle() reads one recvmsg() into a 500-byte buffer: a longer command is
cut (a truncated last IRQ number), so commands longer than MAX_COMMAND are
refused here and the planner bans only as many IRQs as fit (plan/build.py).
The same protocol is used by other daemons that cooperate with irqbalance:
intel/lpmd (irqbalance_ban_cpus(): "settings cpus <list>" / "NULL") and
firedancer (fd_irqbalance_ban_cpus_set()). tuned's plugin_irqbalance.py and
CRI-O's high-performance hooks use the other way, IRQBALANCE_BANNED_CPULIST in
irqbalance's environment file (/etc/sysconfig/irqbalance, /etc/default/
irqbalance) and a restart: they own irqbalance's configuration; agentlatd
uses the socket so that it never edits a file it does not own and never
restarts a service, and so that a crash of agentlatd leaves nothing behind
that the next irqbalance restart would not clear.

A ban set over the socket lives as long as that irqbalance process: a new
irqbalance (restart, upgrade) starts without it. read() therefore returns the
ban of the running irqbalance, and the engine's drift check sees a restart as
drift; this knob asks to be reasserted whatever policy.daemon.drift says
(reassert = True), which puts the ban back within one tick of the new pid.

Talking to irqbalance safely (seen in the VM tier with Debian's 1.9.2):
  - irqbalance serves its socket from its one main loop, and a rescan (which
    "settings cpus" itself triggers) blocks that loop for a whole sleep
    interval; a "setup" sent then is answered 10 s later;
  - a client that gives up before the answer risks killing irqbalance (read
    in irqbalance.c, not observed: sock_handle() answers with send() without
    MSG_NOSIGNAL, and irqbalance does not ignore SIGPIPE). In the VM tier a
    2-s timeout on "setup" left agentlatd unable to read or restore the ban.
So "settings cpus" is sent without waiting for anything (the kernel buffers
it; irqbalance reads it when its loop comes round), and "setup" is asked
only of an irqbalance agentlatd has not written to yet (once per irqbalance
process), with a timeout of SETUP_TIMEOUT_S, longer than any sleep interval
irqbalance is run with in practice. For an irqbalance agentlatd wrote to,
read() returns what was written: agentlatd is the only writer of the UI ban
(irqbalance-ui is an interactive tool).

irqbalance.banned_cpus values are CPU lists ("2-3"; "" = nothing banned);
irqbalance.banned_irqs values are IRQ numbers, space-separated ("24 25"; "" =
none). Target: "irqbalance".
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from agentlatd.apply import irqbalance
from agentlatd.apply.knobs import Knob, cpulist_equal, register
from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.kernel.irqbalance_proto import MAX_COMMAND, ban_irqs_command
from agentlatd.kernel.knobnames import KnobName
from agentlatd.sysfs.root import Root

NAME = KnobName.IRQBALANCE_BANNED_CPUS
IRQS_NAME = KnobName.IRQBALANCE_BANNED_IRQS
TARGET = "irqbalance"
CONTEXT = "irqbalance"
SEND_TIMEOUT_S = 2.0
SETUP_TIMEOUT_S = 60.0  # > irqbalance's sleep interval (module docstring: never give up early)
MAX_ANSWER = 1 << 20


def socket_rel(pid: int) -> str:
    """The socket of irqbalance `pid`, relative to the Root."""
    return f"run/irqbalance/irqbalance{pid}.sock"


@dataclass(frozen=True, slots=True)
class Setup:
    """irqbalance's answer to "setup"."""

    sleep_s: int
    banned_irqs: tuple[int, ...]
    banned: CpuSet


def parse_setup(text: str) -> Setup:
    """"SLEEP 10 IRQ 24 LOAD 0 DIFF 0 CLASS 3 BANNED 00000000,0000000c" -> Setup.

    ValueError when it is not a setup answer."""
    tok = text.split()
    if len(tok) < 4 or tok[0] != "SLEEP" or "BANNED" not in tok:
        raise ValueError(f"not an irqbalance setup answer: {text[:80]!r}")
    sleep_s = int(tok[1])
    irqs: list[int] = []
    i = 2
    while i < len(tok) and tok[i] == "IRQ":
        irqs.append(int(tok[i + 1]))
        i += 8  # IRQ n LOAD l DIFF d CLASS c
    b = tok.index("BANNED")
    mask = tok[b + 1] if b + 1 < len(tok) else "0"
    try:
        banned = CpuSet.parse_mask(mask)
    except CpuSetError as e:
        raise ValueError(f"irqbalance BANNED mask {mask!r}: {e}") from e
    return Setup(sleep_s, tuple(irqs), banned)


def _request(root: Root, pid: int, command: str, *, answer: bool) -> str:
    rel = socket_rel(pid)
    path = root.path(rel)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(SETUP_TIMEOUT_S if answer else SEND_TIMEOUT_S)
        s.connect(path)
        s.sendall(command.encode())
        if not answer:
            return ""
        s.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        n = 0
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            n += len(b)
            if n > MAX_ANSWER:
                raise KernelError("read", rel, errno.EMSGSIZE, CONTEXT)
        return b"".join(chunks).decode("ascii", "replace")
    except TimeoutError as e:
        raise KernelError("read" if answer else "write", rel, errno.ETIMEDOUT, CONTEXT) from e
    except OSError as e:
        raise KernelError("read" if answer else "write", rel, e.errno or errno.EIO,
                          CONTEXT) from e
    finally:
        s.close()


def the_pid(root: Root) -> int:
    """The running irqbalance's pid; KernelError ESRCH when none (or several) run."""
    pids = irqbalance.running(root)
    if len(pids) != 1:
        raise KernelError("read", "irqbalance", errno.ESRCH, CONTEXT,
                          None if not pids else f"{len(pids)} irqbalance processes")
    return pids[0]


def read_setup(root: Root, pid: int) -> Setup:
    text = _request(root, pid, "setup", answer=True)
    if not text:
        # sock_handle() closes without a word when it rejects the peer's credentials
        raise KernelError("read", socket_rel(pid), errno.EACCES, CONTEXT)
    try:
        return parse_setup(text)
    except ValueError as e:
        raise KernelError("read", socket_rel(pid), errno.EPROTO, CONTEXT) from e


class IrqbalanceBanKnob(Knob):
    """CPUs banned in the running irqbalance, over its socket (module docstring)."""

    name = NAME
    help = "CPUs the running irqbalance must not place IRQs on (its UI socket)"
    context = CONTEXT
    live_only = True
    reassert = True  # a restarted irqbalance forgot the ban: put it back (module docstring)

    def __init__(self) -> None:
        # irqbalance pid -> the ban written to it (module docstring: read() asks
        # "setup" only of an irqbalance not written to yet)
        self._written: dict[int, str] = {}

    def written_to(self, pid: int) -> bool:
        """Whether agentlatd sent this irqbalance a command (its "setup" may block)."""
        return pid in self._written

    def check_target(self, target: str) -> None:
        if target != TARGET:
            raise ValueError(f"{NAME} has the one target {TARGET!r}, not {target!r}")

    def read(self, root: Root, target: str) -> str:
        pid = the_pid(root)
        written = self._written.get(pid)
        if written is not None:
            return written
        for old in [p for p in self._written if p != pid]:
            del self._written[old]  # that irqbalance is gone
        return read_setup(root, pid).banned.to_list()

    def write(self, root: Root, target: str, value: str) -> None:
        pid = the_pid(root)
        try:
            cpus = CpuSet.parse_list(value.strip()) if value.strip() else CpuSet()
        except CpuSetError as e:
            raise ValueError(f"{NAME}: {e}") from e
        _request(root, pid, f"settings cpus {cpus.to_list() if cpus else 'NULL'}", answer=False)
        self._written[pid] = cpus.to_list()

    def equal(self, a: str, b: str) -> bool:
        return cpulist_equal(a, b)

    def shell(self, target: str, value: str) -> str:
        cmd = f"settings cpus {value.strip() or 'NULL'}"
        return ("python3 -c 'import glob,socket; s=socket.socket(socket.AF_UNIX); "
                "s.connect(glob.glob(\"/run/irqbalance/irqbalance*.sock\")[0]); "
                f"s.send(b\"{cmd}\")'  # or: systemctl restart irqbalance")


def parse_irqs(value: str) -> tuple[int, ...]:
    """"24 25" -> (24, 25), sorted and unique; ValueError for anything else (IRQ 0
    included: irqbalance's strtoul() loop ends at a 0)."""
    try:
        irqs = sorted({int(t) for t in value.replace(",", " ").split()})
    except ValueError:
        raise ValueError(f"{IRQS_NAME}: not a list of IRQ numbers: {value!r}") from None
    if irqs and irqs[0] <= 0:
        raise ValueError(f"{IRQS_NAME}: IRQ {irqs[0]} cannot be banned over the socket")
    return tuple(irqs)


class IrqbalanceIrqsKnob(Knob):
    """IRQs the running irqbalance leaves alone (its cl_banned_irqs, over its
    socket): the IRQs agentlatd steers itself (module docstring)."""

    name = IRQS_NAME
    help = "IRQs the running irqbalance must leave alone (its UI socket)"
    context = CONTEXT
    live_only = True
    reassert = True  # a restarted irqbalance has only its --banirq list again

    def __init__(self, cpus: IrqbalanceBanKnob) -> None:
        self._cpus = cpus  # shares its "written to" knowledge: one "setup" per irqbalance
        self._written: dict[int, str] = {}
        self._read: dict[int, str] = {}

    def check_target(self, target: str) -> None:
        if target != TARGET:
            raise ValueError(f"{IRQS_NAME} has the one target {TARGET!r}, not {target!r}")

    def read(self, root: Root, target: str) -> str:
        pid = the_pid(root)
        for old in [p for p in (*self._written, *self._read) if p != pid]:
            self._written.pop(old, None)
            self._read.pop(old, None)
        if pid in self._written:
            return self._written[pid]
        if pid in self._read and self._cpus.written_to(pid):
            # a "setup" now could wait out a whole rescan (module docstring)
            return self._read[pid]
        value = " ".join(str(i) for i in read_setup(root, pid).banned_irqs)
        self._read[pid] = value
        return value

    def write(self, root: Root, target: str, value: str) -> None:
        irqs = parse_irqs(value)
        cmd = ban_irqs_command(irqs)
        if len(cmd) > MAX_COMMAND:
            raise ValueError(f"{IRQS_NAME}: {len(irqs)} IRQs make a {len(cmd)}-byte command; "
                             f"irqbalance reads at most {MAX_COMMAND + 1} bytes")
        pid = the_pid(root)
        _request(root, pid, cmd, answer=False)
        self._written[pid] = " ".join(str(i) for i in irqs)

    def equal(self, a: str, b: str) -> bool:
        try:
            return parse_irqs(a) == parse_irqs(b)
        except ValueError:
            return a.split() == b.split()

    def shell(self, target: str, value: str) -> str:
        cmd = ban_irqs_command(parse_irqs(value))
        return ("python3 -c 'import glob,socket; s=socket.socket(socket.AF_UNIX); "
                "s.connect(glob.glob(\"/run/irqbalance/irqbalance*.sock\")[0]); "
                f"s.send(b\"{cmd}\")'  # or: systemctl restart irqbalance")


def current_setup(root: Root, pids: tuple[int, ...]) -> Setup | None:
    """The running irqbalance's "setup" answer (None: none runs, or it does not answer)."""
    if len(pids) != 1:
        return None
    try:
        return read_setup(root, pids[0])
    except KernelError:
        return None


def current_ban(root: Root, pids: tuple[int, ...]) -> CpuSet | None:
    """The running irqbalance's ban now (None: none runs, or it does not answer).

    The planner adds it to the home CPUs: a UI ban replaces irqbalance's own
    (IRQBALANCE_BANNED_CPULIST, isolated and nohz_full CPUs) in cputree.c
    setup_banned_cpus(), so those must stay in the list agentlatd sends."""
    if len(pids) != 1:
        return None
    try:
        return read_setup(root, pids[0]).banned
    except KernelError:
        return None


_CPUS_KNOB = IrqbalanceBanKnob()
register(_CPUS_KNOB)
register(IrqbalanceIrqsKnob(_CPUS_KNOB))
