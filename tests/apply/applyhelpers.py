"""Helpers for the engine tests: fixture-tree copies, a fault-injecting Root,
real network namespaces with veth pairs, and the CLI run as a subprocess."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from agentlatd.errors import KernelError
from agentlatd.plan.changes import Change
from agentlatd.sysfs.root import Root

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "machines"
SNAPSHOT = REPO / "tests" / "apply" / "sysfs_snapshot.py"


# ---------------------------------------------------------------------------
# fixture trees


def copy_fixture(name: str, dest: pathlib.Path) -> pathlib.Path:
    """A writable copy of tests/fixtures/machines/<name> (symlinks kept)."""
    out = dest / name
    shutil.copytree(FIXTURES / name, out, symlinks=True)
    return out


def small_tree(base: pathlib.Path) -> pathlib.Path:
    """A tiny hand-made tree: 4 CPUs, IRQs 40-46, NIC eth9 (2 rx/2 tx queues),
    block device nvme0n1, two sysctls. Used when no fixture fits a test."""
    def put(rel: str, text: str) -> None:
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    put("sys/devices/system/cpu/online", "0-3\n")
    put("sys/devices/system/cpu/possible", "0-3\n")
    for irq in range(40, 47):
        put(f"proc/irq/{irq}/smp_affinity_list", "0-3\n")
        put(f"proc/irq/{irq}/smp_affinity", "f\n")
        put(f"proc/irq/{irq}/effective_affinity_list", "0\n")
        put(f"proc/irq/{irq}/node", "0\n")
    for q in ("rx-0", "rx-1"):
        put(f"sys/class/net/eth9/queues/{q}/rps_cpus", "0\n")
        put(f"sys/class/net/eth9/queues/{q}/rps_flow_cnt", "0\n")
    for q in ("tx-0", "tx-1"):
        put(f"sys/class/net/eth9/queues/{q}/xps_cpus", "0\n")
    put("sys/class/net/eth9/threaded", "0\n")
    put("sys/class/net/eth9/napi_defer_hard_irqs", "0\n")
    put("sys/class/net/eth9/gro_flush_timeout", "0\n")
    put("sys/class/net/eth9/ifindex", "7\n")
    put("sys/block/nvme0n1/queue/rq_affinity", "1\n")
    put("proc/sys/net/core/rps_sock_flow_entries", "0\n")
    put("proc/sys/net/core/netdev_budget_usecs", "2000\n")
    put("proc/sys/kernel/random/boot_id", "11111111-2222-3333-4444-555555555555\n")
    return base


def tree_bytes(base: pathlib.Path, skip: Iterable[str] = ("run",)) -> dict[str, bytes | str]:
    """Every file of a tree, byte for byte (symlinks as their target)."""
    out: dict[str, bytes | str] = {}
    skip = tuple(skip)
    for dirpath, dirs, files in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        if rel_dir.split(os.sep)[0] in skip:
            dirs[:] = []
            continue
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            out[rel] = ("->" + os.readlink(p)) if os.path.islink(p) else pathlib.Path(p).read_bytes()
    return out


def diff_keys(a: dict[str, bytes | str], b: dict[str, bytes | str]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class FaultRoot(Root):
    """A Root over a writable tree that answers chosen writes with an errno,
    and emulates two kernel behaviours a plain file lacks:
      - effective_affinity_list follows smp_affinity_list (x86 vector
        allocation: the lowest CPU of the mask), except for `stuck_effective`
        paths (an IRQ whose vector moves only at its next interrupt)
      - rps_flow_cnt is rounded up to a power of two (net-sysfs.c
        store_rps_dev_flow_table_cnt: roundup_pow_of_two)
    It counts write attempts per path, so a test can prove a managed IRQ is
    never written again."""

    __slots__ = ("attempts", "faults", "stuck_effective")

    def __init__(self, tree: str | os.PathLike[str], faults: dict[str, int] | None = None,
                 stuck_effective: Iterable[str] = ()) -> None:
        super().__init__(str(tree))
        self.faults = dict(faults or {})
        self.stuck_effective = set(stuck_effective)
        self.attempts: dict[str, int] = {}

    def write_value(self, rel: str, value: str, context: str | None = None) -> None:
        self.attempts[rel] = self.attempts.get(rel, 0) + 1
        if rel in self.faults:
            raise KernelError("write", rel, self.faults[rel], context, value)
        if rel.endswith("/rps_flow_cnt") and value.strip().isdigit() and int(value) > 0:
            n = int(value)
            value = f"{1 << (n - 1).bit_length()}\n"
        super().write_value(rel, value, context)
        if rel.endswith("/smp_affinity_list"):
            eff = rel.replace("smp_affinity_list", "effective_affinity_list")
            if self.exists(eff) and rel not in self.stuck_effective:
                first = value.strip().split(",")[0].split("-")[0]
                super().write_value(eff, first + "\n", context)

    def writes(self, rel: str) -> int:
        return self.attempts.get(rel, 0)


FAULTS = {"EIO": errno.EIO, "EPERM": errno.EPERM, "ENOSPC": errno.ENOSPC, "EBUSY": errno.EBUSY,
          "EINVAL": errno.EINVAL}


# ---------------------------------------------------------------------------
# the CLI as a subprocess


def plan_file(path: pathlib.Path, changes: Iterable[Change]) -> pathlib.Path:
    path.write_text(json.dumps({"changes": [
        {"knob": c.knob, "target": c.target_text, "current": c.current, "desired": c.desired,
         "reason": c.reason} for c in changes]}, indent=1))
    return path


LAUNCH = REPO / "tests" / "support" / "launch.py"
FORKCLI = REPO / "tests" / "support" / "forkcli.py"


def cli(args: list[str], *, netns: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 120, crash_after_writes: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    """`python -m agentlatd ARGS`, inside `ip netns exec NETNS` when given.

    crash_after_writes=N: through tests/support/launch.py, which SIGKILLs the run at
    write point N (agentlatd/apply/engine.py, "Write points")."""
    cmd = [sys.executable, "-m", "agentlatd", *args]
    if crash_after_writes is not None:
        cmd = [sys.executable, str(LAUNCH), "--crash-after-writes", str(crash_after_writes),
               "--", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


class ForkedCli:
    """`cli()` for a test that runs the CLI dozens of times (kill -9 at every write point):
    each command a fresh fork of one process that imported agentlatd once
    (tests/support/forkcli.py says why that is the same run), inside NETNS when given."""

    def __init__(self, netns: str | None = None) -> None:
        cmd = [sys.executable, str(FORKCLI)]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-forkcli-"))
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert "ready" in self._answer(60), "tests/support/forkcli.py did not start"

    def _answer(self, timeout: float) -> dict[str, object]:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else ""
        assert line, f"forkcli said nothing within {timeout} s (exit status {self.proc.poll()})"
        out: dict[str, object] = json.loads(line)
        return out

    def __call__(self, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
                 crash_after_writes: int | None = None) -> subprocess.CompletedProcess[str]:
        """As cli(args, netns=..., ...) would answer."""
        assert self.proc.stdin is not None
        out, err = self.dir / "out", self.dir / "err"
        req = {"args": args, "env": {**os.environ, **(env or {})}, "cwd": str(REPO),
               "out": str(out), "err": str(err), "timeout": timeout,
               "crash_after_writes": crash_after_writes}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rc = self._answer(timeout + 30)["rc"]
        if rc is None:
            raise subprocess.TimeoutExpired(["agentlatd", *args], timeout)
        assert isinstance(rc, int)
        return subprocess.CompletedProcess(["agentlatd", *args], rc, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc.stdin is not None:
            with suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ForkedCli:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# network namespaces


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Veths:
    netns: str
    devs: tuple[str, ...]  # every device this test made, inside netns only


@contextmanager
def netns_with_veths(pairs: int = 1, *, gro: bool = True) -> Iterator[Veths]:
    """A fresh network namespace with `pairs` veth pairs, both ends inside it.

    IPv6 is off in the namespace so no router solicitation or DAD packet moves
    a statistics counter between two snapshots. GRO on gives veth its NAPI
    instances (veth_napi_add: with GRO or XDP), which threaded, per-NAPI
    napi-set and napi_defer_hard_irqs act on. Everything is removed on exit.
    """
    tag = secrets.token_hex(3)
    ns = f"alt-{tag}"
    _ip("netns", "add", ns)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"],
                       check=True, capture_output=True, timeout=30)
        devs: list[str] = []
        for i in range(pairs):
            a, b = f"va{i}{tag}", f"vb{i}{tag}"
            _ip("-n", ns, "link", "add", a, "type", "veth", "peer", "name", b)
            devs += [a, b]
        for d in devs:
            _ip("-n", ns, "link", "set", d, "up")
            if gro:
                subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", d, "gro", "on"],
                               check=True, capture_output=True, timeout=30)
        yield Veths(ns, tuple(devs))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


def snapshot(netns: str, devs: Iterable[str]) -> dict[str, dict[str, str]]:
    """Every value under sys/class/net/<dev>/ as that namespace sees it."""
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(SNAPSHOT), *devs],
                       check=True, capture_output=True, text=True, timeout=60)
    data: dict[str, dict[str, str]] = json.loads(p.stdout)
    return data


def snapshot_diff(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> list[str]:
    out = []
    for dev in sorted(a.keys() | b.keys()):
        da, db = a.get(dev, {}), b.get(dev, {})
        for k in sorted(da.keys() | db.keys()):
            if da.get(k) != db.get(k):
                out.append(f"{dev}/{k}: {da.get(k)!r} -> {db.get(k)!r}")
    return out


def ifindex(netns: str, dev: str) -> int:
    p = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "dev", dev],
                       check=True, capture_output=True, text=True, timeout=30)
    return int(json.loads(p.stdout)[0]["ifindex"])


def napi_set_fields() -> frozenset[str]:
    """napi-set attributes this kernel accepts (empty: no per-NAPI config)."""
    try:
        from agentlatd.netlink.netdev import netdev_support
    except ImportError:
        return frozenset()
    sup = netdev_support()
    return frozenset(sup.napi_set_fields) if sup.napi_set else frozenset()


def napi_values(netns: str, dev: str) -> list[dict[str, object]]:
    """napi-get of every NAPI of `dev` in `netns` (read-only), ids left out."""
    from agentlatd.netlink.netdev import napi_list
    out = []
    for n in napi_list(ifindex(netns, dev), netns=netns):
        out.append({"irq": n.irq, "rx": n.rx_queues, "tx": n.tx_queues, **n.config()})
    return out


def online_mask() -> str:
    from agentlatd.cpuset import CpuSet
    from agentlatd.sysfs.root import HOST
    return CpuSet.parse_list(HOST.read_value("sys/devices/system/cpu/online")).to_mask()


_NAPI_VALUE = {"defer_hard_irqs": "defer-hard-irqs=3", "gro_flush_timeout": "gro-flush-timeout=50000",
               "irq_suspend_timeout": "irq-suspend-timeout=1000", "threaded": "threaded=enabled"}


def veth_changes(a: str, b: str, napi_fields: frozenset[str]) -> list[Change]:
    """Every queue/NAPI knob on a veth pair: device-wide NAPI knobs on `a`,
    per-NAPI napi-set on `b` (where the kernel has it) -- never both on one
    device, since a device-wide write resets its NAPIs' own values."""
    mask = online_mask()
    ch: list[Change] = []
    for d in (a, b):
        ch += [Change.parse("net.rps_cpus", f"{d}/rx-0", "", mask, "test"),
               Change.parse("net.rps_flow_cnt", f"{d}/rx-0", "", "4096", "test"),
               Change.parse("net.xps_cpus", f"{d}/tx-0", "", "1", "test")]
    ch += [Change.parse("net.threaded", a, "", "1", "test"),
           Change.parse("net.napi_defer_hard_irqs", a, "", "2", "test"),
           Change.parse("net.gro_flush_timeout", a, "", "20000", "test"),
           Change.parse("net.coalesce", a, "", "rx-usecs=20", "test")]
    fields = [_NAPI_VALUE[f] for f in ("defer_hard_irqs", "gro_flush_timeout",
                                       "irq_suspend_timeout", "threaded") if f in napi_fields]
    if fields:
        # veth NAPIs serve no queue in queue-get and have no IRQ: the K-th NAPI
        ch.append(Change.parse("napi.config", f"{b}/napi0", "", ",".join(fields), "test"))
    return ch
