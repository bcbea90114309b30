"""proc/PID/cgroup, proc/self/mountinfo and the cpuset files of a process's cgroup.

Kernel docs: Documentation/admin-guide/cgroup-v2.rst ("Cpuset Interface
Files": cpuset.cpus.effective, cpuset.cpus.partition), Documentation/
admin-guide/cgroup-v1/cpusets.rst (cpuset.cpus, cpuset.effective_cpus,
cpuset.cpu_exclusive), man 7 cgroups ("/proc/[pid]/cgroup": one line
"hierarchy-ID:controller-list:cgroup-path" per hierarchy, "0::path" for v2),
Documentation/filesystems/proc.rst 3.5 (/proc/<pid>/mountinfo).

Which CPUs a process may run on is the effective cpuset of its cgroup:
  v2  cpuset.cpus.effective of its cgroup; a cgroup without the cpuset
      controller enabled has no cpuset files and runs on its nearest
      ancestor's cpuset, so the walk goes up to the first one that has them
  v1  cpuset.effective_cpus (== cpuset.cpus unless the hierarchy is mounted
      with cpuset_v2_mode), else cpuset.cpus, of its cgroup in the hierarchy
      that has the cpuset controller

Exclusive CPUs (held by one workload, not to be shared):
  v2  a non-root cgroup whose cpuset.cpus.partition reads "root" or
      "isolated" (a valid partition; "root invalid (...)" is not one): its
      cpuset.cpus.effective belongs to it alone
  v1  a non-root cpuset with cpuset.cpu_exclusive = 1 (the top cpuset always
      reads 1: it holds every CPU and excludes nothing)

Parsers take text; readers go through Root. Paths inside a hierarchy are
kept as the kernel prints them ("/kubepods.slice/.../cri-containerd-<id>.scope").
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

CGROUP2 = "cgroup2"
CGROUP1 = "cgroup"
V2_DEFAULT = "sys/fs/cgroup"
V1_CPUSET_DEFAULT = "sys/fs/cgroup/cpuset"
MAX_WALK = 20000  # cgroup directories looked at per scan (a node with 110 pods has ~1500)


@dataclass(frozen=True, slots=True)
class CgroupLine:
    """One line of proc/PID/cgroup."""

    hierarchy: int
    controllers: tuple[str, ...]  # () for the v2 line "0::/path"
    path: str


def parse_proc_cgroup(text: str) -> tuple[CgroupLine, ...]:
    """proc/PID/cgroup -> its lines; malformed lines are skipped."""
    out: list[CgroupLine] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        ctl = tuple(c for c in parts[1].split(",") if c)
        out.append(CgroupLine(int(parts[0]), ctl, parts[2]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """A cgroup hierarchy mount from proc/self/mountinfo."""

    fstype: str  # "cgroup2" | "cgroup"
    mount_point: str  # relative to the Root ("sys/fs/cgroup/cpuset")
    root: str  # the hierarchy's directory mounted there ("/" on a host)
    options: tuple[str, ...]  # super options: v1 controllers ("cpuset", "name=systemd")


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # show_mountinfo() escapes space, tab, newline and backslash as \ooo
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo_cgroups(text: str) -> tuple[CgroupMount, ...]:
    """The cgroup and cgroup2 mounts in a mountinfo text (proc.rst 3.5: fields
    "id parent major:minor root mount-point options [optional...] - fstype source super")."""
    out: list[CgroupMount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split()
        r = right.split()
        if len(f) < 6 or len(r) < 3 or r[0] not in (CGROUP1, CGROUP2):
            continue
        out.append(CgroupMount(r[0], _unescape(f[4]).strip("/"), _unescape(f[3]),
                               tuple(r[2].split(","))))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Hierarchies:
    """Where the v2 hierarchy and the v1 cpuset hierarchy are mounted (None: not mounted)."""

    v2: CgroupMount | None
    v1_cpuset: CgroupMount | None


def hierarchies(mounts: tuple[CgroupMount, ...]) -> Hierarchies:
    v2 = next((m for m in mounts if m.fstype == CGROUP2), None)
    v1 = next((m for m in mounts if m.fstype == CGROUP1 and "cpuset" in m.options), None)
    return Hierarchies(v2, v1)


def read_hierarchies(root: Root) -> Hierarchies:
    """From proc/self/mountinfo; a recorded tree without it falls back to the usual places."""
    try:
        h = hierarchies(parse_mountinfo_cgroups(root.read_text("proc/self/mountinfo")))
    except KernelError:
        h = Hierarchies(None, None)
    if h.v2 is None and h.v1_cpuset is None:
        if root.exists(f"{V1_CPUSET_DEFAULT}/cpuset.cpus"):
            h = Hierarchies(None, CgroupMount(CGROUP1, V1_CPUSET_DEFAULT, "/", ("cpuset",)))
        elif root.exists(f"{V2_DEFAULT}/cgroup.controllers"):
            h = Hierarchies(CgroupMount(CGROUP2, V2_DEFAULT, "/", ()), None)
    return h


def _dir_of(m: CgroupMount, path: str) -> str | None:
    """The Root-relative directory of cgroup `path` in mount `m` (None: outside the mount)."""
    path = posixpath.normpath("/" + path.lstrip("/"))
    base = posixpath.normpath(m.root)
    if base != "/":
        if path != base and not path.startswith(base + "/"):
            return None
        path = path[len(base):] or "/"
    if ".." in path.split("/"):
        return None
    rel = path.strip("/")
    return f"{m.mount_point}/{rel}" if rel else m.mount_point


@dataclass(frozen=True, slots=True)
class ProcCpuset:
    """The cgroup a process is in and the CPUs its cpuset allows."""

    version: int  # 2 | 1 | 0 (no cpuset hierarchy found)
    path: str  # the cgroup path as proc/PID/cgroup prints it (v2 line when there is one)
    cpus: CpuSet | None  # None: unknown (no cpuset files readable)


def _cpus(root: Root, rel: str) -> CpuSet | None:
    try:
        return CpuSet.parse_list(root.read_value(rel))
    except (KernelError, CpuSetError):
        return None


def cpuset_of(root: Root, lines: tuple[CgroupLine, ...], h: Hierarchies) -> ProcCpuset:
    """The effective cpuset for a process whose proc/PID/cgroup is `lines`."""
    v2_path = next((ln.path for ln in lines if ln.hierarchy == 0 and not ln.controllers), "")
    if h.v1_cpuset is not None:
        p = next((ln.path for ln in lines if "cpuset" in ln.controllers), None)
        if p is not None:
            d = _dir_of(h.v1_cpuset, p)
            cpus = None
            if d is not None:
                cpus = _cpus(root, f"{d}/cpuset.effective_cpus") or _cpus(root, f"{d}/cpuset.cpus")
            return ProcCpuset(1, p, cpus)
    if h.v2 is not None and v2_path:
        d = _dir_of(h.v2, v2_path)
        while d is not None:
            if root.exists(f"{d}/cpuset.cpus.effective"):
                return ProcCpuset(2, v2_path, _cpus(root, f"{d}/cpuset.cpus.effective"))
            if d == h.v2.mount_point:
                break
            d = posixpath.dirname(d)
        return ProcCpuset(2, v2_path, None)
    return ProcCpuset(0, v2_path, None)


def read_cpuset(root: Root, pid: int, h: Hierarchies | None = None) -> ProcCpuset | None:
    """The effective cpuset of process `pid`; None when the process is gone."""
    try:
        text = root.read_text(f"proc/{pid}/cgroup", "process")
    except KernelError:
        return None
    return cpuset_of(root, parse_proc_cgroup(text), h if h is not None else read_hierarchies(root))


@dataclass(frozen=True, slots=True)
class ExclusiveCgroup:
    """A cgroup holding its CPUs exclusively (a v2 partition, a v1 exclusive cpuset)."""

    path: str  # as proc/PID/cgroup would print it
    cpus: CpuSet
    kind: str  # "partition root" | "partition isolated" | "cpu_exclusive"


def parse_partition(text: str) -> str | None:
    """cpuset.cpus.partition -> "root" | "isolated" for a valid partition, else None.

    cgroup-v2.rst: "member", "root", "isolated", and "root invalid (<reason>)" /
    "isolated invalid (<reason>)" when the kernel could not honour it."""
    v = text.strip()
    return v if v in ("root", "isolated") else None


def exclusive_cgroups(root: Root, h: Hierarchies) -> tuple[ExclusiveCgroup, ...]:
    """Every non-root cgroup that holds its CPUs exclusively, v2 and v1."""
    out: list[ExclusiveCgroup] = []
    seen = 0
    for m, version in ((h.v2, 2), (h.v1_cpuset, 1)):
        if m is None:
            continue
        stack = [""]
        while stack and seen < MAX_WALK:
            rel = stack.pop()
            seen += 1
            d = f"{m.mount_point}/{rel}" if rel else m.mount_point
            names = root.listdir(d)
            if not names:
                continue
            if rel:
                cg = posixpath.join(m.root, rel) if m.root != "/" else "/" + rel
                if version == 2 and "cpuset.cpus.partition" in names:
                    kind = parse_partition(root.read_optional(f"{d}/cpuset.cpus.partition"))
                    cpus = _cpus(root, f"{d}/cpuset.cpus.effective") if kind else None
                    if kind and cpus:
                        out.append(ExclusiveCgroup(cg, cpus, f"partition {kind}"))
                elif version == 1 and root.read_optional(f"{d}/cpuset.cpu_exclusive") == "1":
                    cpus = _cpus(root, f"{d}/cpuset.cpus")
                    if cpus:
                        out.append(ExclusiveCgroup(cg, cpus, "cpu_exclusive"))
            for n in root.subdirs(d):
                stack.append(f"{rel}/{n}" if rel else n)
    return tuple(sorted(out, key=lambda e: e.path))


def under(path: str, parent: str) -> bool:
    """Whether cgroup `path` is `parent` or below it."""
    p, q = path.rstrip("/") or "/", parent.rstrip("/") or "/"
    return p == q or q == "/" or p.startswith(q + "/")
