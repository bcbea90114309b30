"""Helpers for the real-kernel tests that run inside the QEMU guest (tests/vm/run_tier.sh).

Deliberately independent of the agentlatd package: these helpers check the raw kernel facts
the project is built on, so a bug in agentlatd's own parsers cannot hide a kernel change.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Any

# The private network run_vm.sh sets up: the tap peer of the guest's virtio-net (inside
# QEMU's own network namespace) and the UDP echo server there.
VIRTIO_GUEST_ADDR = "10.9.0.2/24"
TAP_PEER = "10.9.0.1"
UDP_ECHO_PORT = 7
# QEMU user-mode networks of e1000e and igb: (guest address, slirp gateway that answers ping)
SLIRP = {"e1000e": ("10.0.2.15/24", "10.0.2.2"), "igb": ("10.0.3.15/24", "10.0.3.2")}
# MACs run_vm.sh gives the NICs: the stable way to find them (names depend on probe order)
MACS = {"virtio": "52:54:00:00:00:10", "e1000e": "52:54:00:00:00:11", "igb": "52:54:00:00:00:12"}


@dataclass(frozen=True, slots=True)
class Irq:
    """One numbered row of /proc/interrupts."""

    irq: int
    counts: tuple[int, ...]  # per CPU, in CPU order
    name: str  # the action name: the last field (the chip columns differ between kernels)


@dataclass(frozen=True, slots=True)
class Nics:
    """Interface names of the guest's NICs (found by MAC; names follow probe order)."""

    virtio: str
    e1000e: str
    igb: str

    @property
    def virtio_dev(self) -> str:
        """virtioN: the prefix of the virtio-net IRQ names (virtioN-input.Q ...)."""
        return virtio_dev_of(self.virtio)


def read_interrupts() -> dict[int, Irq]:
    """/proc/interrupts, numbered rows only (not NMI:, LOC: ...)."""
    lines = pathlib.Path("/proc/interrupts").read_text().splitlines()
    ncpu = len(lines[0].split())
    out: dict[int, Irq] = {}
    for line in lines[1:]:
        f = line.split()
        if not f or not f[0].rstrip(":").isdigit():
            continue
        n = int(f[0].rstrip(":"))
        out[n] = Irq(n, tuple(int(c) for c in f[1 : 1 + ncpu]), f[-1])
    return out


def irqs_named(pattern: str) -> dict[str, Irq]:
    """Rows whose action name fully matches `pattern`, keyed by name."""
    rx = re.compile(pattern)
    return {i.name: i for i in read_interrupts().values() if rx.fullmatch(i.name)}


def irq_path(irq: int, leaf: str) -> pathlib.Path:
    return pathlib.Path(f"/proc/irq/{irq}/{leaf}")


def read_cpulist(irq: int, leaf: str = "smp_affinity_list") -> str:
    return irq_path(irq, leaf).read_text().strip()


def write_once(path: str | pathlib.Path, text: str) -> None:
    """One os.write on an unbuffered fd, so the kernel's errno comes from that call."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_errno(path: str | pathlib.Path, text: str) -> int:
    """write_once, returning 0 or the errno it failed with."""
    try:
        write_once(path, text)
    except OSError as e:
        return e.errno or -1
    return 0


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def ethtool(*args: str) -> str:
    return run("ethtool", *args).stdout


def ethtool_coalesce(ifname: str) -> dict[str, str]:
    """`ethtool -c IF` as {field: value} ("rx-usecs": "77", "Adaptive RX": "off" ...)."""
    out: dict[str, str] = {}
    for line in ethtool("-c", ifname).splitlines():
        if line.startswith("Adaptive RX:"):  # "Adaptive RX: off  TX: off"
            f = line.split()
            out["adaptive-rx"], out["adaptive-tx"] = f[2], f[4]
        elif ": " in line:
            k, v = line.split(": ", 1)
            out[k.strip()] = v.strip()
    return out


def ifname_by_mac(mac: str) -> str | None:
    for n in pathlib.Path("/sys/class/net").iterdir():
        addr = n / "address"
        if addr.exists() and addr.read_text().strip() == mac:
            return n.name
    return None


def virtio_dev_of(ifname: str) -> str:
    """The virtio device (virtioN, the prefix of its IRQ names) under a virtio-net ifname."""
    return os.path.basename(os.path.realpath(f"/sys/class/net/{ifname}/device"))


def stop_daemon(proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """SIGTERM a daemon still running (it rolls back), SIGKILL it after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def daemon_answers(sock: pathlib.Path) -> bool:
    """An agentlatd daemon answers "ping" on its socket (agentlatd.client)."""
    from agentlatd.client import Connection, Unavailable

    try:
        with Connection(str(sock), timeout=2.0) as c:
            return c.request("ping") is not None
    except (Unavailable, OSError):
        return False


def wait_for(pred: object, timeout: float = 20.0, what: str = "condition") -> None:
    assert callable(pred)
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def busybox() -> str:
    """The lab's static busybox (the host may have no ping); the guest sees the lab dir."""
    return os.path.join(os.environ.get("AGENTLATD_VMLAB_DIR", ""), "bbpkg/bin/busybox")


def ping_from_cpus(cpus: list[int], dst: str, count: int = 5) -> dict[int, int]:
    """Ping `dst` concurrently from one process pinned to each CPU; replies per CPU."""
    procs = {
        c: subprocess.Popen(
            ["taskset", "-c", str(c), busybox(), "ping", "-q", "-c", str(count), "-i", "0.2", "-W", "2", dst],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in cpus
    }
    got = {}
    for c, p in procs.items():
        out, _ = p.communicate(timeout=60)
        m = re.search(r"(\d+) packets received", out)
        got[c] = int(m.group(1)) if m else 0
    return got


def udp_echo_from_cpus(cpus: list[int], n: int = 40, dst: str = TAP_PEER) -> dict[int, int]:
    """Send `n` UDP datagrams to the echo server from a child pinned to each CPU (each its
    own flow, so XPS sends it on that CPU's TX queue and tun answers on the matching RX
    queue); returns the echoes received per CPU."""
    return udp_flows_from_cpus(cpus, flows=1, n=n, dst=dst)


# --- generic netlink: just enough to ask the kernel which netdev family ops it has ------

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_OPS = 6
CTRL_ATTR_OP_ID = 1
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3


def _attrs(buf: bytes) -> dict[int, bytes]:
    out = {}
    while len(buf) >= 4:
        ln, typ = struct.unpack_from("HH", buf)
        if ln < 4:
            break
        out[typ & 0x3FFF] = buf[4:ln]
        buf = buf[(ln + 3) & ~3 :]
    return out


def genl_family(name: str) -> tuple[int, set[int]] | None:
    """(family id, command ids) of generic netlink family `name`, or None if the kernel has
    no such family (include/uapi/linux/genetlink.h, CTRL_CMD_GETFAMILY)."""
    fam = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(fam), CTRL_ATTR_FAMILY_NAME) + fam
    attr += b"\0" * ((4 - len(attr) % 4) % 4)
    payload = struct.pack("BBH", CTRL_CMD_GETFAMILY, 1, 0) + attr
    msg = struct.pack("IHHII", 16 + len(payload), GENL_ID_CTRL, NLM_F_REQUEST, 1, 0) + payload
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as s:
        s.send(msg)
        data = s.recv(65536)
    _ln, typ, _fl, _seq, _pid = struct.unpack_from("IHHII", data)
    if typ == NLMSG_ERROR:
        (err,) = struct.unpack_from("i", data, 16)
        if -err == errno.ENOENT:
            return None
        raise OSError(-err, os.strerror(-err))
    top = _attrs(data[20:])
    ops = set()
    for op in _attrs(top.get(CTRL_ATTR_OPS, b"")).values():
        a = _attrs(op)
        if CTRL_ATTR_OP_ID in a:
            ops.add(struct.unpack("I", a[CTRL_ATTR_OP_ID])[0])
    (fid,) = struct.unpack("H", top[CTRL_ATTR_FAMILY_ID][:2])
    return fid, ops


# include/uapi/linux/netdev.h (6.12 / 6.13)
NETDEV_CMD_NAPI_GET = 11
NETDEV_CMD_NAPI_SET = 14
NETDEV_A_NAPI = {1: "ifindex", 2: "id", 3: "irq", 4: "pid"}


def napi_dump(ifindex: int) -> list[dict[str, int]]:
    """netdev napi-get dump for one device: [{"ifindex", "id", "irq"?, "pid"?}, ...]."""
    fam = genl_family("netdev")
    assert fam is not None, "no netdev generic netlink family"
    fid, _ = fam
    attr = struct.pack("HHI", 8, 1, ifindex)  # NETDEV_A_NAPI_IFINDEX
    payload = struct.pack("BBH", NETDEV_CMD_NAPI_GET, 1, 0) + attr
    msg = struct.pack("IHHII", 16 + len(payload), fid, NLM_F_REQUEST | NLM_F_DUMP, 2, 0)
    out: list[dict[str, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as s:
        s.send(msg + payload)
        while True:
            data = s.recv(65536)
            while data:
                ln, typ, _fl, _seq, _pid = struct.unpack_from("IHHII", data)
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    (err,) = struct.unpack_from("i", data, 16)
                    raise OSError(-err, os.strerror(-err))
                a = _attrs(data[20:ln])
                out.append(
                    {
                        NETDEV_A_NAPI[k]: struct.unpack("I", v[:4])[0]
                        for k, v in a.items()
                        if k in NETDEV_A_NAPI
                    }
                )
                data = data[(ln + 3) & ~3 :]


def kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    assert m, os.uname().release
    return (int(m.group(1)), int(m.group(2))) >= (major, minor)


# --- driving agentlatd itself (tests/vm/guest/test_agentlatd_*.py) ----------------------
# Everything above reads the kernel on its own; the helpers below run agentlatd and read
# back what it did, again straight from the kernel (never through agentlatd's parsers).

REPO = pathlib.Path(__file__).resolve().parents[3]
# the CLI with a crash hook installed (tests/support/launch.py): agentlatd itself has none
LAUNCH = REPO / "tests" / "support" / "launch.py"
# The partition the agentlatd tests' policy asks for (conftest Lab.policy): two of the four
# vCPUs take completions, two are agent home CPUs; explicit, so every expectation is known.
COMPLETION = frozenset({0, 1})
HOME = frozenset({2, 3})


@dataclass(frozen=True, slots=True)
class Ran:
    """One agentlatd invocation: rc < 0 = killed by that signal (as subprocess reports)."""

    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    secs: float
    forked: bool

    def json(self) -> object:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        how = "forked" if self.forked else "subprocess"
        return (f"agentlatd {' '.join(self.args)} ({how}, {self.secs:.1f} s): rc={self.rc}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


class Agentlatd:
    """Runs agentlatd in the guest, two ways:

    - run():  `python -m agentlatd ARGS`, a fresh interpreter: the CLI exactly as a person
              runs it (2-5 s each under TCG: interpreter start plus imports);
    - fork(): a forked copy of this test process calls agentlatd.cli.main(ARGS) with its
              own stdout/stderr and environment: the same code from argument parsing on,
              in a real process that can be SIGKILLed (crash_after_writes: the write
              hook of tests/support/launch.py), for ~0.6 s. The modules are imported
              once here, before the first fork.
    A module compile pass runs once first: the checkout has no __pycache__ and the job
    runs with PYTHONDONTWRITEBYTECODE, so every interpreter would otherwise compile
    agentlatd from source (the .pyc files land in the guest's tmpfs overlay only).
    """

    def __init__(self) -> None:
        import compileall

        compileall.compile_dir(str(REPO / "agentlatd"), quiet=1)
        self._loaded = False

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        e = dict(os.environ)
        e.update(env or {})
        return e

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180,
            crash_after_writes: int | None = None) -> Ran:
        import sys

        t0 = time.monotonic()
        cli = ["-m", "agentlatd"] if crash_after_writes is None else [
            str(LAUNCH), "--crash-after-writes", str(crash_after_writes), "--"]
        p = subprocess.run([sys.executable, *cli, *args], cwd=REPO, env=self._env(env),
                           capture_output=True, text=True, timeout=timeout, check=False)
        return Ran(tuple(args), p.returncode, p.stdout, p.stderr, time.monotonic() - t0, False)

    def preload(self) -> None:
        if not self._loaded:
            import importlib

            cli = importlib.import_module("agentlatd.cli")
            cli.build_parser()  # imports every command module
            importlib.import_module("agentlatd.netlink.ethtool")  # pyroute2: ~3 s under TCG
            importlib.import_module("agentlatd.netlink.netdev")
            importlib.import_module("agentlatd.knobset")  # every knob registered
            import sys

            sys.path.insert(0, str(LAUNCH.parent))
            importlib.import_module("launch")
            self._loaded = True

    def fork(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
             crash_after_writes: int | None = None) -> Ran:
        import io
        import sys
        import tempfile
        import traceback

        self.preload()
        full_env = self._env(env)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.monotonic()
            pid = os.fork()
            if pid == 0:  # child: never return into pytest
                rc = 70
                try:
                    os.dup2(out.fileno(), 1)
                    os.dup2(err.fileno(), 2)
                    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
                    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
                    os.environ.clear()
                    os.environ.update(full_env)
                    os.chdir(REPO)
                    if crash_after_writes is not None:
                        sys.modules["launch"].install(crash_after_writes=crash_after_writes)
                    rc = sys.modules["agentlatd.cli"].main(list(args))
                except SystemExit as e:  # argparse
                    rc = e.code if isinstance(e.code, int) else 2
                except BaseException:
                    traceback.print_exc()
                finally:
                    with contextlib.suppress(Exception):
                        sys.stdout.flush()
                        sys.stderr.flush()
                    os._exit(rc & 0xFF)
            end = t0 + timeout
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > end:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    raise TimeoutError(f"agentlatd {' '.join(args)} (forked) ran past {timeout} s")
                time.sleep(0.02)
            secs = time.monotonic() - t0
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.seek(0)
            err.seek(0)
            return Ran(tuple(args), rc, out.read().decode(errors="replace"),
                       err.read().decode(errors="replace"), secs, True)


def parse_cpulist(text: str) -> frozenset[int]:
    """ "0-1,3" -> {0, 1, 3} ("" -> empty)."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return frozenset(out)


def parse_mask(text: str) -> frozenset[int]:
    """A sysfs CPU mask ("3", "00000000,00000003") as a set of CPUs."""
    v = int(text.strip().replace(",", "") or "0", 16)
    return frozenset(i for i in range(v.bit_length()) if v >> i & 1)


def read_file(path: str | pathlib.Path) -> str:
    """A pseudo-file's text, or "!ERRNAME" when it cannot be read."""
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError as e:
        return "!" + errno.errorcode.get(e.errno or 0, str(e.errno))


def knob_snapshot(ifnames: list[str]) -> dict[str, str]:
    """Every value agentlatd could change here, read from the kernel: each IRQ's
    smp_affinity_list, the NICs' queue files and NAPI files, their coalescing (ethtool -c),
    every disk's rq_affinity and the net.core sysctls agentlatd knows."""
    snap: dict[str, str] = {}
    for d in sorted(pathlib.Path("/proc/irq").iterdir(), key=lambda p: (len(p.name), p.name)):
        if d.name.isdigit():
            snap[f"{d}/smp_affinity_list"] = read_file(d / "smp_affinity_list")
    for ifname in ifnames:
        base = pathlib.Path("/sys/class/net") / ifname
        for leaf in ("threaded", "napi_defer_hard_irqs", "gro_flush_timeout"):
            snap[f"{base}/{leaf}"] = read_file(base / leaf)
        for q in sorted((base / "queues").iterdir()):
            for leaf in ("rps_cpus", "rps_flow_cnt", "xps_cpus"):
                if (q / leaf).exists():
                    snap[f"{q}/{leaf}"] = read_file(q / leaf)
        p = run("ethtool", "-c", ifname, check=False)
        snap[f"ethtool -c {ifname}"] = p.stdout if p.returncode == 0 else f"!rc={p.returncode}"
    for q in sorted(pathlib.Path("/sys/block").glob("*/queue/rq_affinity")):
        snap[str(q)] = read_file(q)
    for s in ("rps_sock_flow_entries", "netdev_budget", "netdev_budget_usecs"):
        snap[f"net.core.{s}"] = read_file(f"/proc/sys/net/core/{s}")
    return snap


def snapshot_diff(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


def knob_in_effect(knob: str, target: str, desired: str) -> bool:
    """Whether the kernel now shows `desired` for one agentlatd knob (read independently)."""
    if knob == "irq.affinity":
        return parse_cpulist(read_cpulist(int(target))) == parse_cpulist(desired)
    if knob in ("net.rps_cpus", "net.xps_cpus"):
        dev, q = target.split("/")
        return parse_mask(read_file(f"/sys/class/net/{dev}/queues/{q}/{knob[4:]}")) == parse_mask(desired)
    if knob in ("net.threaded", "net.napi_defer_hard_irqs", "net.gro_flush_timeout"):
        return read_file(f"/sys/class/net/{target}/{knob[4:]}") == desired
    if knob == "net.coalesce":
        got = ethtool_coalesce(target)
        return all(got.get(k) == v for k, v in (kv.split("=") for kv in desired.split(",")))
    if knob == "block.rq_affinity":
        return read_file(f"/sys/block/{target}/queue/rq_affinity") == desired
    if knob == "task.affinity":  # target pid:starttime:tid (threaded NAPI's kthreads)
        pid, _start, tid = target.split(":")
        for line in read_file(f"/proc/{pid}/task/{tid}/status").splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return parse_cpulist(line.split(":", 1)[1].strip()) == parse_cpulist(desired)
        return False
    raise AssertionError(f"no independent reader for knob {knob}")


def irq_deltas(before: dict[int, Irq], after: dict[int, Irq], irqs: list[int]) -> dict[int, list[int]]:
    """Per-CPU interrupt counts of `irqs` between two read_interrupts()."""
    return {n: [a - b for a, b in zip(after[n].counts, before[n].counts, strict=True)]
            for n in irqs}


def udp_flows_from_cpus(cpus: list[int], flows: int = 8, n: int = 4,
                        dst: str = TAP_PEER) -> dict[int, int]:
    """`flows` sockets (source ports, hence flow hashes) per CPU, each pinned to its CPU,
    `n` datagrams each; returns the echoes received per CPU. With enough flows XPS/hash
    spreads them over every TX queue and so (tun answers on the queue a flow came from)
    over every virtio RX queue."""
    kids: dict[int, tuple[int, int]] = {}
    for c in cpus:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            got = 0
            try:
                os.close(r)
                os.sched_setaffinity(0, {c})
                socks = []
                for _ in range(flows):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.settimeout(2.0)
                    s.connect((dst, UDP_ECHO_PORT))
                    socks.append(s)
                for i in range(n):
                    for k, s in enumerate(socks):
                        msg = f"cpu{c}-f{k}-{i}".encode()
                        s.send(msg)
                        with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                            got += s.recv(2048) == msg
                os.write(w, str(got).encode())
            finally:
                os._exit(0)
        os.close(w)
        kids[c] = (pid, r)
    got_by_cpu = {}
    for c, (pid, r) in kids.items():
        with os.fdopen(r) as f:
            data = f.read()
        os.waitpid(pid, 0)
        got_by_cpu[c] = int(data or 0)
    return got_by_cpu


def napi_kthreads(ifname: str) -> dict[int, str]:
    """pid -> Cpus_allowed_list of every napi/<ifname>-<id> kernel thread."""
    out: dict[int, str] = {}
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
            if comm.startswith(f"napi/{ifname}-"):
                out[int(p.name)] = task_cpus(int(p.name))
        except OSError:
            continue
    return out


def task_cpus(pid: int, tid: int | None = None) -> str:
    """Cpus_allowed_list of a process (or one of its threads), from /proc."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list in {path}")


def thread_cpus(pid: int) -> dict[int, str]:
    """tid -> Cpus_allowed_list of every thread of `pid`."""
    out: dict[int, str] = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, AssertionError):
            out[int(t)] = task_cpus(pid, int(t))
    return out
