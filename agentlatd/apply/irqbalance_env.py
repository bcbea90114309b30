"""The irqbalance.env_banned_cpus knob: the home CPUs banned in irqbalance's
environment file, for an irqbalance whose socket agentlatd cannot use.

irqbalance(1); irqbalance cputree.c setup_banned_cpus() (v1.9.2): at start,
a non-empty IRQBALANCE_BANNED_CPUS (hex cpumask, cpumask_parse_user()) wins
(1.8+ still honours it, logging "IRQBALANCE_BANNED_CPUS is discarded, Use
IRQBALANCE_BANNED_CPULIST instead"), else IRQBALANCE_BANNED_CPULIST (a CPU
list, 1.8+), else the isolated and nohz_full CPUs. irqbalance reads them
only when it starts, so a change needs a restart.

This is the way tuned (tuned/plugins/plugin_irqbalance.py: edits
IRQBALANCE_BANNED_CPULIST in /etc/sysconfig/irqbalance, then
`systemctl try-restart irqbalance`, exit 5 = no such unit tolerated) and
CRI-O's high-performance hooks (internal/runtimehandlerhooks/utils.go
updateIrqBalanceConfigFile(): IRQBALANCE_BANNED_CPUS="<mask>" rewritten in
place in /etc/sysconfig/irqbalance, then restartService(): `systemctl restart
irqbalance`) ban CPUs; try-restart is tuned's choice here, since it never
starts an irqbalance that was stopped. agentlatd
uses it only where the socket way (apply/irqbalance_ban.py) is not there:
irqbalance built without its UI, or its socket unreachable (it binds an
unnamed abstract socket when run/irqbalance is not writable: irqbalance.c
init_socket()).

What differs from tuned: tuned's restore deletes every IRQBALANCE_BANNED_CPULIST
line, losing an administrator's own ban. Here the edit only APPENDS one block
(a marker comment and both variables, same set: the last assignment wins in
a systemd EnvironmentFile and in a sourced shell file) and the journal holds
the whole original file, so that restore puts back the very bytes that were
there (or removes a file agentlatd created). Guarded against other writers:
  - restore finds the file exactly as agentlatd left it: the original bytes;
  - someone edited other lines since: only agentlatd's block is removed, the
    other edits are kept (and said);
  - agentlatd's block was changed or removed: nothing is written; the entry
    fails with the reason and stays in the journal for a person
    (`agentlatd rollback --print` shows the original).
Drift (an administrator changed the ban in the file) follows
policy.daemon.drift: this is a file another writer may own, unlike the socket
ban that a restarted irqbalance forgets.

Restart: the unit the running irqbalance is in (proc/<pid>/cgroup,
"0::/system.slice/irqbalance.service"), `systemctl try-restart <unit>`: restarts
it only if it runs. An irqbalance not started by systemd cannot be restarted
here, so the file is not edited at all (nothing half-applied) unless
policy... no: the change fails with ENOTSUP and says so. On a recorded tree
(Root other than "/") there is no service: the file in the tree is edited and
no restart is attempted.

IRQs handed over: irqbalance.c parse_command_line() takes "--banirq=N" (short
"-i N", getopt_long, one IRQ an option, repeatable) and the units pass
$IRQBALANCE_ARGS to it (upstream misc/irqbalance.service, Debian's
"ExecStart=/usr/sbin/irqbalance --foreground $IRQBALANCE_ARGS"). So where the
running irqbalance's unit passes them, the block also sets IRQBALANCE_ARGS: the
administrator's own arguments (the file's, else the last set by the unit's
earlier environment files) followed by --banirq=N for each IRQ agentlatd steers,
and the same restart makes irqbalance leave them alone, as "settings ban irqs"
does over the socket. Where the unit does not pass them (or irqbalance is no
service) the IRQs cannot be handed over and stay irqbalance's (choose(): irqs
None). The restore guard also checks that line still bans agentlatd's IRQs.

Values: the knob reads the whole file (ABSENT when there is none); the plan
asks for a CPU list ("2-3"), with IRQs handed over "2-3 banirq=9,40"
(kernel/irqbalance_proto.py env_value()). Two values are equal when they ban
the same CPUs in the environment, and the same IRQs when both name IRQs.
Target: the file's absolute path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from agentlatd.apply import irqbalance, irqbalance_ban
from agentlatd.apply.knobs import Knob, register
from agentlatd.apply.knobs import get as get_knob
from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.kernel.irqbalance_proto import split_env_value
from agentlatd.kernel.knobnames import KnobName
from agentlatd.sysfs.root import Root

NAME = KnobName.IRQBALANCE_ENV_BANNED_CPUS
CONTEXT = "irqbalance"
# Debian/Ubuntu, then RHEL/Fedora/SUSE: the files the distributions' units name
CANDIDATES = ("/etc/default/irqbalance", "/etc/sysconfig/irqbalance")
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system",
             "lib/systemd/system")
ABSENT = "\0absent\0"  # the original "file" when there was none (a NUL is no env file's)
MARKER = "# agentlatd: CPUs banned while agentlatd runs; agentlatd removes this block on stop"
SYSTEMCTL_TIMEOUT_S = 60.0
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_DQ_ESCAPED = '"\\`$\n'
ARGS = "IRQBALANCE_ARGS"
# ExecStart= passes the variable's words as arguments: "$IRQBALANCE_ARGS" or "${IRQBALANCE_ARGS}"
_EXEC_USES_ARGS = re.compile(r"\$(?:IRQBALANCE_ARGS\b|\{IRQBALANCE_ARGS\})")


# ---------------------------------------------------------------------------
# pure: the file's text

def parse_env(text: str) -> dict[str, str]:
    """KEY=value lines of an environment file (systemd.exec(5) EnvironmentFile=,
    also a sourced shell file): comments and blank lines skipped, one level of
    quotes removed, the last assignment wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        m = _ASSIGN.match(s)
        if m is None:
            continue
        out[m.group(1)] = decode(m.group(2))
    return out


def decode(raw: str) -> str:
    """One assignment's value as systemd's EnvironmentFile= parser and a POSIX
    shell both read it: '...' literal, "..." with \\ before one of \\"`$ escaping
    it, a bare \\ escaping the next character, quoted pieces joined; unquoted
    text ends at " #" (a shell comment) and loses trailing blanks."""
    out: list[str] = []
    kept = 0  # characters of `out` that are quoted or escaped: never stripped
    s = raw.strip()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "'":
            j = s.find("'", i + 1)
            j = n if j < 0 else j
            out.append(s[i + 1:j])
            kept, i = len(out), j + 1
        elif c == '"':
            i += 1
            while i < n and s[i] != '"':
                if s[i] == "\\" and i + 1 < n and s[i + 1] in _DQ_ESCAPED:
                    i += 1
                out.append(s[i])
                i += 1
            kept, i = len(out), i + 1
        elif c == "\\" and i + 1 < n:
            out.append(s[i + 1])
            kept, i = len(out), i + 2
        elif c == "#" and i > 0 and s[i - 1] in " \t":
            break
        else:
            out.append(c)
            i += 1
    return "".join(out[:kept]) + "".join(out[kept:]).rstrip(" \t")


def quote(value: str) -> str:
    """`value` double-quoted so that decode() (systemd, sh) reads it back."""
    return '"' + re.sub(r'([\\"`$])', r"\\\1", value) + '"'


def banned_irqs(args: str) -> tuple[int, ...]:
    """The IRQs an irqbalance command line bans: irqbalance.c parse_command_line()
    takes getopt_long() options "--banirq=N", "--banirq N", "-iN", "-i N" (and an
    unambiguous prefix of "banirq", "--bani"), up to a "--"."""
    toks = args.split()
    out: list[int] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t == "--":
            break
        val: str | None = None
        if t.startswith("--") and len(t) > 2:
            name, eq, v = t[2:].partition("=")
            if len(name) >= 4 and "banirq".startswith(name):
                if eq:
                    val = v
                elif i + 1 < len(toks):
                    val, i = toks[i + 1], i + 1
        elif t.startswith("-i") and not t.startswith("--"):
            if len(t) > 2:
                val = t[2:]
            elif i + 1 < len(toks):
                val, i = toks[i + 1], i + 1
        if val is not None and val.isdigit():
            out.append(int(val))
        i += 1
    return tuple(out)


def env_ban(text: str) -> CpuSet | None:
    """The CPUs the file bans, as irqbalance's setup_banned_cpus() reads it
    (a non-empty mask wins over the list); None when it sets neither.

    ValueError when the value set is not a mask/list irqbalance would take."""
    if text == ABSENT:
        return None
    env = parse_env(text)
    try:
        if env.get("IRQBALANCE_BANNED_CPUS"):
            return CpuSet.parse_mask(env["IRQBALANCE_BANNED_CPUS"])
        if env.get("IRQBALANCE_BANNED_CPULIST"):
            return CpuSet.parse_list(env["IRQBALANCE_BANNED_CPULIST"])
    except CpuSetError as e:
        raise ValueError(f"irqbalance environment ban: {e}") from e
    return None


@dataclass(frozen=True, slots=True)
class Ban:
    """What a value of this knob bans: CPUs, and the IRQs banned with --banirq
    (None: the value leaves IRQBALANCE_ARGS alone, so IRQs are not compared)."""

    cpus: CpuSet
    irqs: frozenset[int] | None = None


_BLOCK_VARS = ("IRQBALANCE_BANNED_CPULIST", "IRQBALANCE_BANNED_CPUS", ARGS)


def args_line(args: str, irqs: Iterable[int]) -> str:
    """IRQBALANCE_ARGS: the administrator's `args` as they are, then --banirq=N for
    each of `irqs` they do not ban already (irqbalance.c: "banirq" takes one IRQ
    an option, repeated; the unit passes the words of $IRQBALANCE_ARGS)."""
    theirs = set(banned_irqs(args))
    extra = " ".join(f"--banirq={i}" for i in sorted(set(irqs) - theirs))
    return f"{ARGS}={quote(' '.join(x for x in (args.strip(), extra) if x))}\n"


def block(cpus: CpuSet, irqs: Iterable[int] | None = None, args: str = "") -> str:
    """agentlatd's block: both CPU variables, for irqbalance < 1.8 (mask only) and
    1.8+, and with `irqs` IRQBALANCE_ARGS (the administrator's `args` + --banirq)."""
    out = (f"{MARKER}\nIRQBALANCE_BANNED_CPULIST={cpus.to_list()}\n"
           f"IRQBALANCE_BANNED_CPUS={cpus.to_mask()}\n")
    return out if irqs is None else out + args_line(args, irqs)


def with_ban(text: str, cpus: CpuSet, irqs: Iterable[int] | None = None, args: str = "") -> str:
    """`text` (ABSENT: no file) with agentlatd's block appended (an older block
    of agentlatd's replaced). The lines before it are kept byte for byte."""
    base = "" if text == ABSENT else without_block(text)[0]
    if base and not base.endswith("\n"):
        base += "\n"
    return base + block(cpus, irqs, args)


def split_block(text: str) -> tuple[str, dict[str, str] | None]:
    """(`text` without agentlatd's block, the block's assignments as written:
    variable -> whole line); None when there is no block. The block is the marker
    and the lines right after it that assign one of its variables, each once."""
    lines = text.splitlines(keepends=True)
    for i, ln in enumerate(lines):
        if ln.rstrip("\n") != MARKER:
            continue
        got: dict[str, str] = {}
        j = i + 1
        while j < len(lines) and len(got) < len(_BLOCK_VARS):
            m = _ASSIGN.match(lines[j])
            if m is None or m.group(1) not in _BLOCK_VARS or m.group(1) in got:
                break
            got[m.group(1)] = lines[j]
            j += 1
        return "".join(lines[:i] + lines[j:]), got
    return text, None


def without_block(text: str) -> tuple[str, bool]:
    """`text` without agentlatd's block, and whether there was one."""
    base, got = split_block(text)
    return base, got is not None


def _intact(got: dict[str, str], written: Ban) -> bool:
    """Whether the block's lines still ban what agentlatd wrote."""
    want = block(written.cpus).splitlines(keepends=True)[1:]
    if [got.get(v, "") for v in _BLOCK_VARS[:2]] != want:
        return False
    if written.irqs is None:
        return ARGS not in got
    line = got.get(ARGS)
    if line is None:
        return False
    m = _ASSIGN.match(line)
    return m is not None and written.irqs <= set(banned_irqs(decode(m.group(2))))


def restored(current: str, original: str, written: CpuSet | Ban) -> tuple[str, str]:
    """What a restore writes: (new text, note). The guard of the module docstring.

    ValueError when agentlatd's block is no longer as written (another writer
    changed the ban): nothing is to be written then."""
    ours = written if isinstance(written, Ban) else Ban(written)
    base, got = split_block(current)
    if got is None or not _intact(got, ours):
        raise ValueError("agentlatd's IRQBALANCE_* block was changed or removed by "
                         "another writer since agentlatd wrote it: the file is left as it "
                         "is; compare it with the original in `agentlatd rollback --print`")
    before = "" if original == ABSENT else original
    if base == before or (before and not before.endswith("\n") and base == before + "\n"):
        return original, ""  # as agentlatd left it: the original bytes
    return base, "other edits made to the file since agentlatd's were kept"


def is_cpulist(value: str) -> bool:
    """Whether `value` is a ban this knob writes (irqbalance.env_value()), not a file's text."""
    return split_env_value(value) is not None


def ban_of_value(value: str) -> Ban:
    """A value of this knob (a ban it writes, or the file's text) as what it bans.

    ValueError (CpuSetError) when a CPU list or mask cannot be read."""
    parts = split_env_value(value)
    if parts is not None:
        cpus = CpuSet.parse_list(parts[0]) if parts[0] else CpuSet()
        return Ban(cpus, None if parts[1] is None else frozenset(parts[1]))
    if value == ABSENT:
        return Ban(CpuSet(), frozenset())
    return Ban(env_ban(value) or CpuSet(),
               frozenset(banned_irqs(parse_env(value).get(ARGS, ""))))


def unit_of(cgroup_text: str) -> str | None:
    """proc/<pid>/cgroup -> the systemd service the process is in (None: not one).

    "0::/system.slice/irqbalance.service" (v2), "1:name=systemd:/system.slice/
    irqbalance.service" (v1): the last path component ending in ".service"."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not (parts[1] == "" or parts[1] == "name=systemd"):
            continue
        for comp in reversed(parts[2].split("/")):
            if comp.endswith(".service"):
                return comp
    return None


def _service_values(unit_texts: list[str], key: str) -> Iterator[str]:
    """The values of `key=` in the [Service] section of a unit file and its
    drop-ins, in the order systemd reads them."""
    for text in unit_texts:
        section = ""
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("["):
                section = s
            elif section == "[Service]" and s.startswith(key + "="):
                yield s[len(key) + 1:].strip()


def environment_files(unit_texts: list[str]) -> list[str]:
    """EnvironmentFile= paths of a unit file and its drop-ins, in order (a
    leading "-" dropped; an empty assignment clears the list: systemd.exec(5))."""
    out: list[str] = []
    for v in _service_values(unit_texts, "EnvironmentFile"):
        if not v:
            out.clear()
        else:
            out.append(v.lstrip("-"))
    return out


def passes_args(unit_texts: list[str]) -> bool:
    """Whether the unit's ExecStart= (the last one set; an empty one resets)
    passes $IRQBALANCE_ARGS to irqbalance: upstream misc/irqbalance.service and
    Debian's unit do, an old unit with a bare "irqbalance --foreground" does not."""
    set_ = ["", *_service_values(unit_texts, "ExecStart")]
    return bool(_EXEC_USES_ARGS.search(set_[-1]))


def pick_env_file(files: list[str]) -> str | None:
    """The file to edit: the last one under /etc (the administrator's; Debian's
    unit reads /usr/lib/irqbalance/defaults.env first, /etc/default/irqbalance last)."""
    etc = [f for f in files if f.startswith("/etc/") and ".." not in f.split("/")]
    return etc[-1] if etc else None


# ---------------------------------------------------------------------------
# IO

def unit_texts(root: Root, unit: str) -> list[str]:
    """The unit file (first of UNIT_DIRS that has it) and its drop-ins by name."""
    texts: list[str] = []
    for d in UNIT_DIRS:
        t = root.read_optional(f"{d}/{unit}", "\0")
        if t != "\0":
            texts.append(t)
            break
    dropins: dict[str, str] = {}
    for d in reversed(UNIT_DIRS):  # etc/ overrides a drop-in of the same name in lib/
        for name in root.listdir(f"{d}/{unit}.d") if root.isdir(f"{d}/{unit}.d") else []:
            if name.endswith(".conf"):
                dropins[name] = root.read_optional(f"{d}/{unit}.d/{name}")
    return texts + [dropins[n] for n in sorted(dropins)]


def service_of(root: Root, pid: int) -> str | None:
    return unit_of(root.read_optional(f"proc/{pid}/cgroup"))


def env_file(root: Root, pid: int | None) -> str:
    """The environment file of the running irqbalance: its unit's EnvironmentFile
    under /etc, else the distribution's file that exists, else Debian's."""
    unit = service_of(root, pid) if pid is not None else None
    if unit is not None:
        f = pick_env_file(environment_files(unit_texts(root, unit)))
        if f is not None:
            return f
    for f in CANDIDATES:
        if root.exists(f.lstrip("/")):
            return f
    return CANDIDATES[0] if root.isdir("etc/default") or not root.isdir("etc/sysconfig") \
        else CANDIDATES[1]


def running_service(root: Root) -> str | None:
    """The systemd service of the one running irqbalance (None: none, several, or
    not a service)."""
    pids = irqbalance.running(root)
    return service_of(root, pids[0]) if len(pids) == 1 else None


def admin_args(root: Root, target: str, text: str, unit: str | None) -> str:
    """The IRQBALANCE_ARGS irqbalance gets without agentlatd: the file's own
    (`text`, agentlatd's block left out), else the last one set by the unit's
    environment files read before `target` (systemd reads them in order, the last
    assignment wins), else none."""
    own = parse_env("" if text == ABSENT else without_block(text)[0])
    if ARGS in own:
        return own[ARGS]
    args = ""
    for f in environment_files(unit_texts(root, unit)) if unit is not None else []:
        if f == target or ".." in f.split("/"):
            break
        env = parse_env(root.read_optional(f.lstrip("/")))
        args = env.get(ARGS, args)
    return args


def handover_irqs(root: Root, pid: int | None, target: str, text: str) -> tuple[int, ...] | None:
    """What irqbalance bans with --banirq before agentlatd (its administrator's
    IRQBALANCE_ARGS) when IRQs can be handed over through the environment file:
    irqbalance runs as a systemd service whose ExecStart= passes $IRQBALANCE_ARGS.
    None when they cannot: agentlatd steers no IRQ then."""
    unit = service_of(root, pid) if pid is not None else None
    if unit is None or not passes_args(unit_texts(root, unit)):
        return None
    return banned_irqs(admin_args(root, target, text, unit))


def base_ban(root: Root, text: str) -> CpuSet:
    """What irqbalance bans from this file and the kernel (setup_banned_cpus()):
    the file's ban, else the isolated and nohz_full CPUs."""
    try:
        b = env_ban(text)
    except ValueError:
        b = None
    if b is not None:
        return b
    out = CpuSet()
    for f in ("sys/devices/system/cpu/isolated", "sys/devices/system/cpu/nohz_full"):
        v = root.read_optional(f).strip()
        if v and v != "(null)":
            with contextlib.suppress(CpuSetError):
                out |= CpuSet.parse_list(v)
    return out


def read_file(root: Root, target: str) -> str:
    try:
        return root.read_bytes(target.lstrip("/"), CONTEXT).decode("utf-8", "surrogateescape")
    except KernelError as e:
        if e.errno == errno.ENOENT:
            return ABSENT
        raise


def write_file(root: Root, target: str, text: str) -> None:
    """Replace the file atomically (tmp, fsync, rename; mode and owner kept), or
    remove it for ABSENT."""
    rel = target.lstrip("/")
    path = root.path(rel)
    try:
        if text == ABSENT:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None
        tmp = f"{path}.agentlatd-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o644 if st is None else st.st_mode & 0o7777)
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
            if st is not None:
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, st.st_mode & 0o7777)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise KernelError("write", rel, e.errno or errno.EIO, CONTEXT) from e


Restarter = Callable[[Root, str], None]


def systemctl_try_restart(root: Root, unit: str) -> None:
    """`systemctl try-restart <unit>` on the live host (restarts it only if it runs)."""
    try:
        p = subprocess.run(["systemctl", "try-restart", unit], capture_output=True, text=True,
                           timeout=SYSTEMCTL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelError("restart", unit, errno.ETIMEDOUT if isinstance(
            e, subprocess.TimeoutExpired) else (e.errno or errno.EIO), CONTEXT) from e
    if p.returncode != 0:
        raise KernelError("restart", unit, errno.EIO, CONTEXT,
                          (p.stderr or p.stdout).strip()[:200])


class IrqbalanceEnvKnob(Knob):
    """CPUs banned in irqbalance's environment file, then a restart (module docstring)."""

    name = NAME
    help = "CPUs irqbalance must not place IRQs on (its environment file, then a restart)"
    context = CONTEXT

    def __init__(self, restart: Restarter = systemctl_try_restart) -> None:
        self._restart = restart

    def check_target(self, target: str) -> None:
        if not target.startswith("/etc/") or ".." in target.split("/"):
            raise ValueError(f"{NAME}: target must be a file under /etc, not {target!r}")

    def read(self, root: Root, target: str) -> str:
        return read_file(root, target)

    def equal(self, a: str, b: str) -> bool:
        try:
            x, y = ban_of_value(a), ban_of_value(b)
        except (ValueError, CpuSetError):
            return a == b
        if x.irqs is None or y.irqs is None:  # a ban that leaves IRQs alone
            return x.cpus == y.cpus
        return x == y

    def _unit(self, root: Root) -> str | None:
        """The unit to restart (None on a recorded tree: nothing runs there).
        KernelError ENOTSUP when the running irqbalance is no systemd service."""
        if not root.is_host:
            return None
        unit = running_service(root)
        if unit is None:
            raise KernelError("restart", "irqbalance", errno.EOPNOTSUPP, CONTEXT,
                              "the running irqbalance is not a systemd service: it cannot be "
                              "restarted to read its environment file")
        return unit

    def write(self, root: Root, target: str, value: str) -> None:
        if not is_cpulist(value):
            raise ValueError(f"{NAME}: write takes a CPU list (and banirq=IRQs), "
                             "not the file's text")
        try:
            ban = ban_of_value(value)
        except (ValueError, CpuSetError) as e:
            raise ValueError(f"{NAME}: {e}") from e
        unit = self._unit(root)  # before any edit: nothing half-applied
        current = read_file(root, target)
        args = "" if ban.irqs is None else admin_args(
            root, target, current, unit if unit is not None else running_service(root))
        write_file(root, target, with_ban(current, ban.cpus, ban.irqs, args))
        if unit is not None:
            self._restart(root, unit)

    def restore(self, root: Root, target: str, original: str, *, written: str | None,
                journaled: AbstractSet[tuple[str, str]]) -> str:
        current = read_file(root, target)
        try:
            ours = ban_of_value(written or "")
        except (ValueError, CpuSetError) as e:
            raise ValueError(f"{NAME}: journaled value {written!r}: {e}") from e
        text, note = restored(current, original, ours)
        unit = self._unit(root)
        write_file(root, target, text)
        if unit is not None:
            self._restart(root, unit)
        return note

    def shell(self, target: str, value: str) -> str:
        path = shlex.quote(target)
        restart = "systemctl try-restart irqbalance"
        if value == ABSENT:
            return f"rm -f {path} && {restart}"
        if is_cpulist(value):
            ban = ban_of_value(value)
            return (f"printf '%s' {shlex.quote(block(ban.cpus, ban.irqs))} >> {path} && {restart}")
        return f"printf '%s' {shlex.quote(value)} > {path} && {restart}"


register(IrqbalanceEnvKnob())


@dataclass(frozen=True, slots=True)
class Channel:
    """How the home CPUs are banned in the running irqbalance.

    env_file: "" = over its socket (irqbalance.banned_cpus), else the
              environment file (irqbalance.env_banned_cpus) to edit
    base:     what irqbalance bans without agentlatd (None: unknown)
    irqs:     the IRQs it leaves alone without agentlatd (--banirq: read over the
              socket, or from IRQBALANCE_ARGS where its unit passes them;
              None: unknown, or the file cannot hand IRQs over, so agentlatd
              steers no IRQ)"""

    env_file: str
    base: CpuSet | None
    irqs: tuple[int, ...] | None = None  # the socket's banned IRQs before agentlatd


def choose(root: Root, pids: tuple[int, ...],
           journaled: Iterable[tuple[str, str, str]]) -> Channel:
    """The channel for the ban, from the journal's (knob, target, original)
    entries first (a ban once written stays on its channel until restored),
    else the socket when the running irqbalance has one, else its environment
    file."""
    cpus: CpuSet | None = None
    irqs: tuple[int, ...] | None = None
    on_socket = False
    for knob, target, original in journaled:
        if knob == NAME:
            pid = pids[0] if len(pids) == 1 else None
            return Channel(target, base_ban(root, original),
                           handover_irqs(root, pid, target, original))
        if (knob, target) == (irqbalance_ban.NAME, irqbalance_ban.TARGET):
            on_socket = True
            with contextlib.suppress(CpuSetError):
                cpus = CpuSet.parse_list(original) if original else CpuSet()
        if (knob, target) == (irqbalance_ban.IRQS_NAME, irqbalance_ban.TARGET):
            on_socket = True
            with contextlib.suppress(ValueError):
                irqs = irqbalance_ban.parse_irqs(original)
    pid = pids[0] if len(pids) == 1 else None
    if on_socket or pid is None or root.exists(irqbalance_ban.socket_rel(pid)):
        if cpus is None:  # nothing written to this irqbalance yet: "setup" answers at once
            setup = irqbalance_ban.current_setup(root, pids)
            if setup is not None:
                cpus, irqs = setup.banned, setup.banned_irqs if irqs is None else irqs
        elif irqs is None:
            # the CPUs were banned but no IRQ yet: the knob's own cache of what this
            # irqbalance had (read before the first write), never a "setup" that
            # could wait out a rescan where one is cached
            try:
                irqs = irqbalance_ban.parse_irqs(
                    get_knob(irqbalance_ban.IRQS_NAME).read(root, irqbalance_ban.TARGET))
            except (KernelError, ValueError):
                irqs = None
        return Channel("", cpus, irqs)
    path = env_file(root, pid)
    try:
        text = read_file(root, path)
    except KernelError:
        return Channel(path, None)
    return Channel(path, base_ban(root, text), handover_irqs(root, pid, path, text))
