"""Record a host's /proc and /sys into a tree that `--root DIR` replays.

Kernel files: the ones WHITELIST names (proc/interrupts, proc/irq/N/*,
sys/devices/system/cpu/..., sys/class/net/X/..., sys/class/nvme/..., sys/block/...);
formats as in Documentation/ABI/testing/sysfs-* and Documentation/filesystems/proc.rst.

A capture is what `agentlatd plan --root DIR` and bug reports run on
(prometheus/procfs keeps its fixtures the same way). Rules:

- WHITELIST only, never a blind walk of /sys: sysfs has files whose read has
  side effects or blocks (e.g. some PCI `config`/`rom` files, firmware
  attributes), and a full walk is hundreds of thousands of entries.
- Symlinks stay symlinks with their raw (relative) kernel targets: a pattern
  through sys/class/net/eth0 records the link sys/class/net/eth0 ->
  ../../devices/.../net/eth0 AND the files at the real place, so
  Root.realpath() resolves inside the capture as on the host. A link whose
  target holds nothing we capture (the `driver` link: only its basename
  matters) gets an empty directory as its target, so no link dangles.
- A file that exists but cannot be read is listed with its errno name in the
  manifest (DIR/capture.json "unreadable"); e.g. `speed` of a link-down NIC
  reads EINVAL. Read-only permission bits are kept: since 6.12 a managed
  IRQ's proc/irq/N/smp_affinity is 0444 (the manifest lists them in
  "readonly" too, since git does not keep write bits).
- Two counter samples: the counter files (COUNTER_FILES) are read once more a
  second before the rest, into DIR/previous-sample/, with the seconds between
  the two in the manifest ("sample_interval_s"), so that `plan --root DIR` runs
  the daemon's tick with rates (agentlatd/tick.py). A capture of a recorded
  tree copies the tree's own first sample when it has one; a capture without
  one (older captures, hand-made fixtures) replays without rates.
- Read-only: this module only reads the source root.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agentlatd.errors import AgentlatdError, KernelError
from agentlatd.sysfs.root import Root

# Kernel paths relative to the root; '*' and '[..]' match within one
# component (Root.glob); '{a,b}' lists alternatives (expanded below).
# Patterns may pass through symlinks (sys/class/net/*/device/...): the links on
# the way are recorded and the files are stored at their real place. A pattern
# that names a link to a directory ("sys/block/*/device") records the link and
# makes sure its target directory exists in the capture.
# Keep this the single list: tests/fixtures/make_machines.py writes the
# hand-made trees with the same files.
_PCI = "[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]"
_PCI_FILES = "{numa_node,local_cpulist,local_cpus,vendor,device,class,irq,driver,msi_irqs/*}"
_NETDEV_FILES = (
    "{ifindex,iflink,type,mtu,address,operstate,speed,tx_queue_len,threaded,"
    "napi_defer_hard_irqs,gro_flush_timeout,device,device/driver}"
)

WHITELIST: tuple[str, ...] = (
    # -- procfs ---------------------------------------------------------------
    "proc/interrupts",
    "proc/softirqs",
    "proc/stat",
    "proc/sys/kernel/osrelease",
    "proc/sys/kernel/arch",
    "proc/irq/default_smp_affinity",
    "proc/irq/*/{smp_affinity,smp_affinity_list,effective_affinity,"
    "effective_affinity_list,affinity_hint,node}",
    "proc/sys/net/core/{netdev_budget,netdev_budget_usecs,rps_sock_flow_entries,"
    "dev_weight,netdev_max_backlog,busy_poll,busy_read}",
    # -- IRQ descriptors (Documentation/ABI/testing/sysfs-kernel-irq) ---------
    "sys/kernel/irq/*/{actions,chip_name,hwirq,name,per_cpu_count,type,wakeup}",
    # explicit managed marker when debugfs is mounted (IRQD_AFFINITY_MANAGED);
    # usually absent: capture never mounts anything
    "sys/kernel/debug/irq/irqs/*",
    # -- CPUs (Documentation/ABI/testing/sysfs-devices-system-cpu) ------------
    "sys/devices/system/cpu/{possible,present,online,offline,isolated,nohz_full,kernel_max}",
    "sys/devices/system/cpu/smt/{active,control}",
    "sys/devices/system/cpu/cpu[0-9]*/online",
    "sys/devices/system/cpu/cpu[0-9]*/topology/{core_id,physical_package_id,die_id,"
    "cluster_id,thread_siblings_list,thread_siblings,core_cpus_list,core_siblings_list,"
    "package_cpus_list,die_cpus_list,cluster_cpus_list}",
    "sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*/{level,type,id,shared_cpu_list,"
    "shared_cpu_map,size}",
    "sys/devices/system/node/{online,possible,has_cpu,has_memory,has_normal_memory}",
    "sys/devices/system/node/node[0-9]*/{cpulist,cpumap,distance}",
    # -- PCI functions at any depth below a host bridge (root ports, switches,
    #    endpoints): NUMA node, MSI/MSI-X vectors, driver link -----------------
    f"sys/devices/pci*/{_PCI}/{_PCI_FILES}",
    f"sys/devices/pci*/{_PCI}/{_PCI}/{_PCI_FILES}",
    f"sys/devices/pci*/{_PCI}/{_PCI}/{_PCI}/{_PCI_FILES}",
    f"sys/devices/pci*/{_PCI}/{_PCI}/{_PCI}/{_PCI}/{_PCI_FILES}",
    f"sys/devices/pci*/{_PCI}/{_PCI}/{_PCI}/{_PCI}/{_PCI}/{_PCI_FILES}",
    # -- network interfaces, physical and virtual
    #    (Documentation/ABI/testing/sysfs-class-net, sysfs-class-net-queues) ---
    f"sys/class/net/*/{_NETDEV_FILES}",
    "sys/class/net/*/queues/rx-*/{rps_cpus,rps_flow_cnt}",
    "sys/class/net/*/queues/tx-*/{xps_cpus,xps_rxqs,tx_maxrate}",
    # -- NVMe controllers (drivers/nvme/host/core.c nvme_dev_attrs) -----------
    "sys/class/nvme/*/{address,model,state,transport,queue_count,numa_node,cntlid,"
    "device,device/driver}",
    "sys/class/nvme/*/nvme*n*/{queue/rq_affinity,mq/*/cpu_list}",
    # -- block devices and blk-mq hardware contexts (block/blk-mq-sysfs.c) ----
    "sys/block/*/queue/{rq_affinity,nr_requests,scheduler,nomerges}",
    "sys/block/*/mq/*/{cpu_list,nr_tags,nr_reserved_tags}",
    "sys/block/*/{device,device/driver}",
)

# proc/<pid>/comm is captured only for these daemons (agentlatd/apply/irqbalance.py
# looks for irqbalance): never every process of the host
PROCESS_COMMS: tuple[str, ...] = ("irqbalance", "tuned")

# Files that are writable knobs on a normal kernel: when one is read-only on
# the captured host, that is information (Root.mode; model/build.py) and the
# manifest's "readonly" list keeps it. Most /proc and /sys files are 0444
# anyway and are not listed.
KNOB_FILES: frozenset[str] = frozenset({
    "smp_affinity", "smp_affinity_list", "default_smp_affinity", "rps_cpus", "rps_flow_cnt",
    "xps_cpus", "xps_rxqs", "tx_maxrate", "threaded", "napi_defer_hard_irqs",
    "gro_flush_timeout", "rq_affinity", "nr_requests", "scheduler", "nomerges",
    "mtu", "tx_queue_len",
})
_CPU_ONLINE = re.compile(r"^sys/devices/system/cpu/cpu\d+/online$")


def is_knob_file(rel: str) -> bool:
    return (rel.startswith("proc/sys/net/") or rel.rsplit("/", 1)[-1] in KNOB_FILES
            or _CPU_ONLINE.match(rel) is not None)


MANIFEST = "capture.json"
# the first of a capture's two counter samples, and the manifest key of their distance
PREVIOUS_SAMPLE = "previous-sample"
SAMPLE_INTERVAL_KEY = "sample_interval_s"
SAMPLE_INTERVAL_S = 1.0
# what sample/counters.py read_counters() reads (and the possible-CPU list that maps
# per_cpu_count's columns)
COUNTER_FILES: tuple[str, ...] = ("proc/stat", "proc/softirqs", "proc/interrupts",
                                  "sys/kernel/irq/*/per_cpu_count",
                                  "sys/devices/system/cpu/possible")
KEEP = ".gitkeep"  # in each empty link-target directory (not listed in "files")
FORMAT = 1
_MAX_HOPS = 40  # as the kernel's MAXSYMLINKS


def expand_braces(pattern: str) -> list[str]:
    """"a/{b,c}/d" -> ["a/b/d", "a/c/d"] (nested braces allowed)."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for i in range(start, len(pattern)):
        if pattern[i] == "{":
            depth += 1
        elif pattern[i] == "}":
            depth -= 1
            if depth == 0:
                break
    else:
        raise ValueError(f"unbalanced '{{' in capture pattern {pattern!r}")
    body, rest = pattern[start + 1:i], pattern[i + 1:]
    alts: list[str] = []
    depth = 0
    cur = ""
    for ch in body:
        if ch == "," and depth == 0:
            alts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    alts.append(cur)
    out: list[str] = []
    for a in alts:
        out.extend(expand_braces(pattern[:start] + a + rest))
    return out


def patterns(whitelist: Iterable[str] = WHITELIST) -> list[str]:
    """Every glob pattern of the whitelist with its braces expanded."""
    out: list[str] = []
    for p in whitelist:
        out.extend(expand_braces(p))
    return out


class CaptureError(AgentlatdError):
    """The capture cannot be written where asked."""


@dataclass(slots=True)
class Capture:
    """What one capture recorded (the manifest, before it is written)."""

    files: dict[str, int] = field(default_factory=dict)  # real kernel path -> mode bits
    symlinks: dict[str, str] = field(default_factory=dict)  # link path -> raw target
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> errno name
    dirs: set[str] = field(default_factory=set)  # link targets to create empty


def _resolve(src: Root, rel: str, cap: Capture) -> tuple[str, dict[str, str]] | None:
    """`rel` with every symlink on the way resolved: (real path, the links passed).

    None when it leaves the root (an absolute target, ".." above the root) or
    loops; the reason goes to cap.unreadable.
    """
    parts = [p for p in rel.split("/") if p]
    done: list[str] = []
    links: dict[str, str] = {}
    hops = 0
    while parts:
        comp = parts.pop(0)
        if comp == "..":
            if not done:
                cap.unreadable[rel] = "outside the root"
                return None
            done.pop()
            continue
        cand = "/".join([*done, comp])
        target = src.readlink(cand)
        if not target:
            done.append(comp)
            continue
        hops += 1
        if hops > _MAX_HOPS or target.startswith("/"):
            # sysfs links are relative; an absolute one would point at the
            # capturing host, not into the capture
            cap.unreadable[cand] = "ELOOP" if hops > _MAX_HOPS else "absolute symlink"
            return None
        links[cand] = target
        parts = [p for p in target.split("/") if p] + parts
    return "/".join(done), links


def _errname(err: int) -> str:
    return _errno.errorcode.get(err, str(err))


def collect(src: Root, whitelist: Iterable[str] = WHITELIST) -> tuple[Capture, dict[str, bytes]]:
    """Read every whitelisted file of `src`: (what was found, real path -> contents)."""
    cap = Capture()
    data: dict[str, bytes] = {}
    for pat in patterns(whitelist):
        try:
            paths = src.glob(pat)
        except KernelError as e:
            # a directory on the way refuses a listing (debugfs for a non-root user)
            cap.unreadable[e.path] = _errname(e.errno)
            continue
        for path in paths:
            found = _resolve(src, path, cap)
            if found is None:
                continue
            real, links = found
            try:
                st = os.stat(src.path(real))
            except OSError as e:
                # a dangling link: list it at its real directory, keep none of its links
                head, _, name = path.rpartition("/")
                parent = _resolve(src, head, cap)
                cap.unreadable[f"{parent[0]}/{name}" if parent else path] = _errname(e.errno or 0)
                continue
            cap.symlinks.update(links)
            if real in data or real in cap.unreadable:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # a directory (a link's target), a FIFO...: nothing to copy
            try:
                data[real] = src.read_bytes(real)
            except KernelError as e:
                cap.unreadable[real] = _errname(e.errno)
                continue
            cap.files[real] = stat.S_IMODE(st.st_mode)
    for name in src.listdir("proc"):
        if not name.isdigit():
            continue
        rel = f"proc/{name}/comm"
        try:
            comm = src.read_bytes(rel)
        except KernelError:
            continue  # the process exited
        if comm.decode("utf-8", "replace").strip() in PROCESS_COMMS:
            data[rel] = comm
            cap.files[rel] = 0o644
    # targets of links that no captured file or link lies under (driver ->
    # bus/pci/drivers/X): they get an empty directory
    covered: set[str] = set()
    for path in (*data, *cap.symlinks):
        while path and path not in covered:
            covered.add(path)
            path = path.rpartition("/")[0]
    for link, target in cap.symlinks.items():
        dest = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
        if dest.startswith("../") or dest == ".." or dest in covered:
            continue
        if src.isdir(dest):
            cap.dirs.add(dest)
    return cap, data


def _recorded_readonly(src: Root) -> list[str]:
    if src.is_host or not src.exists(MANIFEST):
        return []
    try:
        ro = json.loads(src.read_text(MANIFEST)).get("readonly", [])
    except (KernelError, ValueError, AttributeError):
        return []
    return [str(r) for r in ro] if isinstance(ro, list) else []


def previous_sample(root: Root) -> tuple[Root, float] | None:
    """(a recorded tree's first counter sample, seconds before its own), or None."""
    if root.is_host or not root.isdir(PREVIOUS_SAMPLE):
        return None
    age = recorded_interval(root)
    if age is None or age <= 0:
        return None
    return Root(os.path.join(root.base, PREVIOUS_SAMPLE)), age


def recorded_interval(root: Root) -> float | None:
    """The seconds between a capture's two counter samples (its manifest), or None."""
    try:
        doc = json.loads(root.read_text(MANIFEST))
    except (AgentlatdError, ValueError):
        return None
    v = doc.get(SAMPLE_INTERVAL_KEY) if isinstance(doc, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def read_counter_files(src: Root) -> dict[str, bytes]:
    """The counter files of `src` as they are now (unreadable ones left out)."""
    out: dict[str, bytes] = {}
    for pat in COUNTER_FILES:
        try:
            paths = src.glob(pat)
        except KernelError:
            continue
        for rel in paths:
            try:
                out[rel] = src.read_bytes(rel)
            except KernelError:
                continue
    return out


def _first_sample(src: Root, interval: float, sleep: Callable[[float], None],
                  clock: Callable[[], float]) -> tuple[dict[str, bytes], float] | None:
    """The counter files `interval` seconds before the capture proper (this host), or
    a recorded source's own first sample; with the clock reading it was taken at."""
    if not src.is_host:
        prev = previous_sample(src)
        if prev is None:
            return None
        older, age = prev
        return read_counter_files(older), -age
    if interval <= 0:
        return None
    t0 = clock()
    files = read_counter_files(src)
    sleep(interval)
    return files, t0


def _write_files(out: str, files: dict[str, bytes]) -> None:
    for rel, content in sorted(files.items()):
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(content)


def kernel_release(src: Root) -> str:
    return src.read_optional("proc/sys/kernel/osrelease")


def write_capture(src: Root, out: str, whitelist: Iterable[str] = WHITELIST,
                  machine: str | None = None, now: float | None = None, *,
                  interval: float = SAMPLE_INTERVAL_S,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> dict[str, object]:
    """Capture `src` into directory `out` (absent or empty); return the manifest.

    On this host the counter files are sampled twice, `interval` seconds apart
    (0: once); the first sample goes to out/PREVIOUS_SAMPLE."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise CaptureError(f"{out} exists and is not an empty directory; "
                           "choose a new directory for the capture.")
    if src.base.rstrip("/") and (out + "/").startswith(src.base.rstrip("/") + "/") \
            and not src.is_host:
        raise CaptureError(f"{out} lies inside the root being captured ({src.base}).")
    first = _first_sample(src, interval, sleep, clock)
    cap, data = collect(src, whitelist)
    sample_interval: float | None = None
    if first is not None:
        older, t0 = first
        if src.is_host:
            # the second sample after everything else, so the two are `interval`
            # apart or more, never less; the tree's counter files are that sample
            t1 = clock()
            now_files = {k: v for k, v in read_counter_files(src).items() if k in data}
            sample_interval = round(t1 - t0, 6)
            data.update(now_files)
        else:
            sample_interval = -t0
        older = {k: v for k, v in older.items() if k in data}
    os.makedirs(out, exist_ok=True)
    if first is not None:
        _write_files(os.path.join(out, PREVIOUS_SAMPLE), older)
    for rel in sorted(cap.dirs):
        os.makedirs(os.path.join(out, rel), exist_ok=True)
    for rel, content in sorted(data.items()):
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(content)
    # links last, shortest first: a link's parent is a real directory
    for rel, target in sorted(cap.symlinks.items()):
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink(target, dst)
    for rel in sorted(cap.dirs):
        d = os.path.join(out, rel)
        if not os.listdir(d):
            # git keeps no empty directory, and a committed capture must not
            # leave its `driver` links dangling
            open(os.path.join(d, KEEP), "w").close()
    ro = sorted(r for r, m in cap.files.items() if not m & 0o222 and is_knob_file(r))
    # recapturing a recorded tree: git dropped the 0444 modes, its manifest kept
    # them; list them again (the files stay as the source has them)
    readonly = sorted(set(ro) | {r for r in _recorded_readonly(src) if r in cap.files})
    for rel in ro:
        # keep 0444 on a file that is normally a writable knob (a managed IRQ's
        # affinity on 6.12+); every other file stays 0644, easy to edit
        os.chmod(os.path.join(out, rel), 0o444)
    when = time.time() if now is None else now
    manifest: dict[str, object] = {
        "format": FORMAT,
        "tool": "agentlatd capture",
        "hand_written": False,
        "machine": machine or os.path.basename(out),
        "root": src.base,
        "kernel": kernel_release(src),
        "arch": src.read_optional("proc/sys/kernel/arch") or (
            os.uname().machine if src.is_host else ""),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
        "whitelist": list(whitelist),
        "files": sorted(data),
        "symlinks": dict(sorted(cap.symlinks.items())),
        "unreadable": dict(sorted(cap.unreadable.items())),
        "readonly": readonly,
    }
    if sample_interval is not None:
        manifest[SAMPLE_INTERVAL_KEY] = sample_interval
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest
