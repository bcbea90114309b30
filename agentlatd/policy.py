"""Policy: /etc/agentlatd.toml, validated into frozen dataclasses.

The embedded default (agentlatd/default.toml) is the shipped etc/agentlatd.toml
with every key commented; the daemon runs with no file at all. A user's file is
merged over the default section by section. Errors name the file, the line
where it can be found, the key path and what was expected; unknown keys are
errors (tuned's profiles silently ignore typos; we don't).

tomllib (stdlib since 3.11) rather than tomli: the same parser, no dependency.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import PolicyError
from agentlatd.wire import DEFAULT_SOCKET
from agentlatd.wire import LATENCY_CLASSES as LATENCY_CLASSES  # the policy's vocabulary too

LatencyClass = Literal["interactive", "normal", "background"]


# Limits, each from the kernel interface the value ends up in (checked against
# Linux 6.8 sources), or a tighter bound where the kernel's is not a setting
# anyone means; the unit is in the name or in the key's metadata.
S32_MAX = (1 << 31) - 1
U32_MAX = (1 << 32) - 1
# CONFIG_NR_CPUS is at most 8192 (arch/x86/Kconfig NR_CPUS_RANGE_END with
# MAXSMP; arm64 and powerpc allow at most 4096 and 8192): no host has CPU 8192
MAX_CPUS = 8192
# net/core/net-sysfs.c napi_defer_hard_irqs_store(): val > S32_MAX -> -ERANGE
NAPI_DEFER_HARD_IRQS_MAX = S32_MAX
# net-sysfs.c gro_flush_timeout_store() takes any unsigned long (u64 ns). A
# flush timer beyond a second holds received packets for longer than any step
# budget: the policy stops at 1 s.
GRO_FLUSH_TIMEOUT_MAX_NS = 1_000_000_000
# net-sysfs.c store_rps_dev_flow_table_cnt(): rounded up to a power of two
# whose mask must fit a u32 (so <= 2^32 on 64-bit), vmalloc'ed at 8 bytes
# (struct rps_dev_flow) per entry per rx queue. 2^32 would be 32 GiB a queue;
# Documentation/networking/scaling.rst sizes it at rps_sock_flow_entries / N:
# the policy stops at 2^20 (8 MiB a queue).
RPS_FLOW_CNT_MAX = 1 << 20
# net/core/sysctl_net_core.c rps_sock_flow_sysctl(): size > 1<<29 -> -EINVAL
RPS_SOCK_FLOW_ENTRIES_MAX = 1 << 29
# ETHTOOL_A_COALESCE_RX_USECS is NLA_U32 (net/ethtool/coalesce.c); drivers
# refuse what their hardware cannot do (-EINVAL, reported per device)
RX_USECS_MAX = U32_MAX
# drivers/base/power/sysfs.c pm_qos_resume_latency_us_store(): kstrtos32, and
# negative values and PM_QOS_RESUME_LATENCY_NO_CONSTRAINT (S32_MAX) -> -EINVAL
PM_QOS_RESUME_LATENCY_MAX_US = S32_MAX - 1
# include/uapi/linux/un.h UNIX_PATH_MAX 108, the terminating NUL included
SOCKET_PATH_MAX = 107
PATH_MAX = 4095  # include/uapi/linux/limits.h PATH_MAX 4096, NUL included
# a policy's agent id follows the protocol's name rule (api/protocol.py
# MAX_ID_LEN, _name): 1..128 printable characters
AGENT_ID_MAX = 128
# fs/file.c sysctl_nr_open default (1024 * 1024): one fd per client
MAX_CLIENTS_MAX = 1 << 20


def _check_cpus(v: str) -> str | None:
    if v == "auto":
        return None
    try:
        cpus = CpuSet.parse_list(v)
    except CpuSetError as e:
        return f'expected "auto" or a cpulist like "0-3,8" ({e})'
    if cpus and max(cpus) >= MAX_CPUS:
        return (f"CPU {max(cpus)} is beyond any kernel's CPU limit (NR_CPUS <= {MAX_CPUS}); "
                'expected "auto" or a cpulist of this host\'s CPUs')
    return None


def _check_share(v: float) -> str | None:
    return None if 0 <= v <= 1 else "expected a share between 0 and 1"


def _check_listen(v: str) -> str | None:
    # same rules as agentlatd.metrics.parse_listen: "HOST:PORT", "[v6]:PORT"
    if v == "":
        return None
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})", v.strip())
    if m is None or not m.group(2).isascii() or int(m.group(2)) > 65535:
        return 'expected "" (off) or "HOST:PORT", e.g. "127.0.0.1:9641"'
    return None


def _check_abs_path(v: str, limit: int = PATH_MAX, empty_ok: bool = False) -> str | None:
    if v == "" and empty_ok:
        return None
    if not v.startswith("/") or v == "/":
        return ("expected an absolute path (a relative one would depend on the working "
                "directory the daemon was started in)")
    if not v.isprintable():
        return "expected a path of printable characters (no NUL, newline or escape)"
    if len(v.encode("utf-8", "surrogatepass")) > limit:
        return f"expected a path of at most {limit} bytes"
    return None


def _check_socket_path(v: str) -> str | None:
    return _check_abs_path(v, SOCKET_PATH_MAX)


def _check_opt_path(v: str) -> str | None:
    return _check_abs_path(v, empty_ok=True)


def _check_group(v: str) -> str | None:
    # the portable user/group name set (POSIX 3.437), at most 32 characters
    # (useradd/groupadd's limit)
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", v) is None:
        return "expected a group name: 1..32 of A-Z a-z 0-9 _ . - (not starting with -)"
    return None


def _check_globs(v: tuple[str, ...]) -> str | None:
    for g in v:
        if not 0 < len(g) <= 255 or not g.isprintable():
            return f"expected globs of 1..255 printable characters, got {g!r}"
    return None


def _check_glob(v: str) -> str | None:
    if len(v) > PATH_MAX or not v.isprintable():
        return f"expected a glob of at most {PATH_MAX} printable characters"
    return None


def _check_agent_id(v: str) -> str | None:
    # "" = derived from the process (autoreg.agent_id_for)
    if v and not (len(v) <= AGENT_ID_MAX and v.isprintable()):
        return (f'expected "" or an agent id of 1..{AGENT_ID_MAX} printable characters '
                "(the registration protocol's rule)")
    return None


def _rng(lo: float, hi: float, unit: str, why: str = "") -> Any:
    """Metadata of a number in lo..hi (inclusive), with its unit."""
    def check(v: float) -> str | None:
        if lo <= v <= hi:
            return None
        return (f"expected {_num(lo)}..{_num(hi)}" + (f" {unit}" if unit else "")
                + (f": {why}" if why else ""))
    return {"check": check, "unit": unit, "range": (lo, hi)}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _meta(check: typing.Callable[[Any], str | None] | None = None, doc: str = "",
          unit: str = "") -> Any:
    return {"check": check, "doc": doc, "unit": unit}


@dataclass(frozen=True, slots=True)
class DaemonPolicy:
    # 0.05 s: the loop never ticks faster; an hour: slower is not tuning
    interval: float = field(default=1.0, metadata=_rng(0.05, 3600.0, "s"))
    state_dir: str = field(default="/run/agentlatd", metadata=_meta(_check_abs_path, unit="path"))
    socket: str = field(default=DEFAULT_SOCKET,
                        metadata=_meta(_check_socket_path, unit="path"))
    socket_group: str = field(default="agentlatd", metadata=_meta(_check_group, unit="group"))
    admin_group: str = field(default="agentlatd-admin", metadata=_meta(_check_group, unit="group"))
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drift: Literal["reassert", "yield"] = "yield"
    irqbalance: Literal["cooperate", "refuse", "ignore"] = "cooperate"
    max_clients: int = field(default=4096, metadata=_rng(1, MAX_CLIENTS_MAX, "connections"))
    # per non-root peer uid: requests per second (token bucket refill), the
    # bucket's size, and requests read but not yet answered (api/server.py)
    uid_requests_per_s: float = field(default=1000.0, metadata=_rng(1, 1e6, "requests/s"))
    uid_request_burst: int = field(default=256, metadata=_rng(1, 1e6, "requests"))
    uid_max_inflight: int = field(default=64, metadata=_rng(1, 65536, "requests"))


@dataclass(frozen=True, slots=True)
class CpusPolicy:
    completion: str = field(default="auto", metadata=_meta(_check_cpus, unit="cpulist"))
    home: str = field(default="auto", metadata=_meta(_check_cpus, unit="cpulist"))
    # auto: completion CPUs per NUMA node that has devices (at least 1)
    completion_per_node: int = field(default=1, metadata=_rng(1, MAX_CPUS, "CPUs"))
    # auto: completion CPUs as a share of a node's online CPUs (the larger of the two wins)
    completion_share: float = field(default=0.0, metadata=_rng(0.0, 1.0, "share of a node"))
    # keep SMT siblings of completion CPUs out of the home set
    smt_isolation: bool = True


@dataclass(frozen=True, slots=True)
class DevicesPolicy:
    # globs; non-empty = exactly these devices
    include: tuple[str, ...] = field(default=(), metadata=_meta(_check_globs, unit="globs"))
    exclude: tuple[str, ...] = field(default=("lo",), metadata=_meta(_check_globs, unit="globs"))
    # non-empty = only devices bound to these drivers
    drivers: tuple[str, ...] = field(default=(), metadata=_meta(_check_globs, unit="globs"))
    # globs of NICs a non-admin peer may name in register's `devices` (which
    # moves their RPS to its home CPU); root and admin_group may name any
    agent_nameable: tuple[str, ...] = field(default=(), metadata=_meta(_check_globs, unit="globs"))

    def agent_may_name(self, dev: str) -> bool:
        """May a non-admin agent name NIC `dev` at registration? Only a NIC that
        agent_nameable names and the scope globs keep (the planner then applies
        the rest of the scope, drivers and virtual devices, as to every NIC)."""
        def hit(globs: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(dev, g) for g in globs)
        return (hit(self.agent_nameable) and not hit(self.exclude)
                and (not self.include or hit(self.include)))


@dataclass(frozen=True, slots=True)
class HeatPolicy:
    # heat = irq_weight * (device IRQs/s / irq_scale)
    #      + softirq_weight * (NET_RX+NET_TX+BLOCK+IRQ_POLL+TASKLET softirqs/s / softirq_scale)
    #      + time_weight * (share of time in hardirq+softirq)
    irq_scale: float = field(default=10000.0, metadata=_rng(1e-3, 1e9, "interrupts/s"))
    softirq_scale: float = field(default=10000.0, metadata=_rng(1e-3, 1e9, "softirqs/s"))
    irq_weight: float = field(default=1.0, metadata=_rng(0.0, 1e6, "heat per scaled rate"))
    softirq_weight: float = field(default=1.0, metadata=_rng(0.0, 1e6, "heat per scaled rate"))
    time_weight: float = field(default=10.0, metadata=_rng(0.0, 1e6, "heat per share of time"))
    hot: float = field(default=0.5, metadata=_rng(0.0, 1e6, "heat"))
    cool: float = field(default=0.2, metadata=_rng(0.0, 1e6, "heat"))
    hot_ticks: int = field(default=3, metadata=_rng(1, 10000, "ticks"))
    min_move_interval: float = field(default=10.0, metadata=_rng(0.0, 86400.0, "s"))


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    # step latency budget; 0 = none; a minute at most (a step is not a batch job)
    budget_us: int = field(default=0, metadata=_rng(0, 60_000_000, "us"))
    pin: bool = False  # pin to a home CPU
    exclusive: Literal["exclusive", "shared", "off"] = "off"
    to_completion: bool = False  # place on completion CPUs (background work)
    # setpriority(2): -20..19
    nice: int | None = field(default=None, metadata=_rng(-20, 19, "nice"))
    ioprio: Literal["idle", "be0", "be4", "be7", "none"] = "none"
    # per home CPU while an agent lives there
    pm_qos_resume_latency_us: int | None = field(
        default=None, metadata=_rng(0, PM_QOS_RESUME_LATENCY_MAX_US, "us"))


def _default_classes() -> dict[str, ClassPolicy]:
    return {
        "interactive": ClassPolicy(budget_us=200, pin=True, exclusive="exclusive"),
        "normal": ClassPolicy(budget_us=2000),
        "background": ClassPolicy(to_completion=True, nice=10, ioprio="be7"),
    }


@dataclass(frozen=True, slots=True)
class TuningPolicy:
    irq_affinity: bool = True
    rps: bool = True
    rps_flow_cnt: int = field(default=0, metadata=_rng(0, RPS_FLOW_CNT_MAX, "entries per rx queue"))
    rps_sock_flow_entries: int = field(default=0, metadata=_rng(0, RPS_SOCK_FLOW_ENTRIES_MAX,
                                                                 "entries"))
    # NICs carrying only registered pinned agents' traffic: RPS on their home CPUs
    # ("home") or on the completion CPUs like every NIC ("completion"); model/agent_links.py
    agent_links: Literal["home", "completion"] = "home"
    agent_link_max_pps: int = field(default=20000, metadata=_rng(1, 1_000_000_000, "packets/s"))
    # find the processes each agent waits on and place them with it (agents/chain.py);
    # off: only registered processes are placed, and exclusivity may move the rest
    chains: bool = True
    xps: bool = True
    coalesce: bool = True
    # rx-usecs = min(class budgets) * coalesce_budget_share, bounded below by min_rx_usecs
    coalesce_budget_share: float = field(default=0.1, metadata=_rng(0.0, 1.0, "share of a budget"))
    # a floor above 10 ms is no longer latency-bounded coalescing
    coalesce_min_usecs: int = field(default=8, metadata=_rng(1, 10_000, "us"))
    threaded_napi: bool = False
    napi_defer_hard_irqs: int | None = field(
        default=None, metadata=_rng(0, NAPI_DEFER_HARD_IRQS_MAX, "empty polls"))
    gro_flush_timeout: int | None = field(default=None,
                                          metadata=_rng(0, GRO_FLUSH_TIMEOUT_MAX_NS, "ns"))
    # only when set; latency-bounded batching, never batching off
    netdev_budget_usecs: int | None = field(
        default=None, metadata=_rng(500, 8000, "us", "latency-bounded batching, never batching off"))
    netdev_budget: int | None = field(default=None, metadata=_rng(50, 600, "packets"))
    # block/blk-sysfs.c queue_rq_affinity_store: 0, 1 or 2
    rq_affinity: int | None = field(default=2, metadata=_rng(0, 2, "mode"))


@dataclass(frozen=True, slots=True)
class MetricsPolicy:
    # "127.0.0.1:9641"; empty = off
    listen: str = field(default="", metadata=_meta(_check_listen, unit="host:port"))
    # node_exporter textfile path; empty = off
    textfile: str = field(default="", metadata=_meta(_check_opt_path, unit="path"))
    # seconds between textfile writes
    textfile_interval: float = field(default=15.0, metadata=_rng(1, 3600, "s"))
    # agents whose step latency gets series of their own; the rest are summed under "other"
    max_agents: int = field(default=32, metadata=_rng(0, 1000, "agents"))
    # per-CPU x vector softirq counters (ncpu x 10 series)
    per_cpu_softirq_vectors: bool = False


@dataclass(frozen=True, slots=True)
class AutoRegisterRule:
    agent_id: str = field(default="", metadata=_meta(_check_agent_id, unit="name"))
    latency_class: LatencyClass = "interactive"
    # glob on /proc/PID/comm
    comm: str = field(default="", metadata=_meta(_check_glob, unit="glob"))
    # glob on the resolved /proc/PID/exe
    exe: str = field(default="", metadata=_meta(_check_glob, unit="glob"))
    # glob on the cgroup v2 path
    cgroup: str = field(default="", metadata=_meta(_check_glob, unit="glob"))


@dataclass(frozen=True, slots=True)
class ChainRule:
    """[[chain]]: processes matching every non-empty glob join the chain of each
    registered agent whose agent_id matches `agent` (agents/chain.py): placed
    with it, never an exclusivity victim. For tool servers agentlatd cannot
    find by itself (shared memory, signals, another host's proxy)."""

    # glob on the agent_id
    agent: str = field(default="*", metadata=_meta(_check_glob, unit="glob"))
    # glob on /proc/PID/comm
    comm: str = field(default="", metadata=_meta(_check_glob, unit="glob"))
    # glob on the resolved /proc/PID/exe
    exe: str = field(default="", metadata=_meta(_check_glob, unit="glob"))
    # glob on the cgroup v2 path
    cgroup: str = field(default="", metadata=_meta(_check_glob, unit="glob"))


@dataclass(frozen=True, slots=True)
class Policy:
    daemon: DaemonPolicy = field(default_factory=DaemonPolicy)
    cpus: CpusPolicy = field(default_factory=CpusPolicy)
    devices: DevicesPolicy = field(default_factory=DevicesPolicy)
    heat: HeatPolicy = field(default_factory=HeatPolicy)
    classes: dict[str, ClassPolicy] = field(default_factory=_default_classes)
    tuning: TuningPolicy = field(default_factory=TuningPolicy)
    metrics: MetricsPolicy = field(default_factory=MetricsPolicy)
    auto_register: tuple[AutoRegisterRule, ...] = ()
    chain: tuple[ChainRule, ...] = ()
    source: str = "<embedded default>"
    # (key path, line) of the keys the file sets: errors found later (against
    # the machine, at plan time) point at the line as load-time ones do
    key_lines: tuple[tuple[str, int], ...] = ()

    def error(self, key: str, message: str) -> PolicyError:
        """A PolicyError about `key` of this policy: file, line, key path."""
        line = next((n for k, n in self.key_lines if k == key), None)
        return PolicyError(message, file=self.source, line=line, key=key)


# ---------------------------------------------------------------------------
# loading


def default_text() -> str:
    """The embedded default policy (same text as etc/agentlatd.toml)."""
    return resources.files("agentlatd").joinpath("default.toml").read_text()


def default() -> Policy:
    return loads(default_text(), "<embedded default>")


DEFAULT_PATH = "/etc/agentlatd.toml"
CONFIG_ENV = "AGENTLATD_CONFIG"  # another default path (tests; never /etc there)


def default_path() -> str:
    """Where the installed policy lives: $AGENTLATD_CONFIG, else DEFAULT_PATH."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_PATH


def resolve_path(config: str | None) -> str | None:
    """The policy file in force: `config` (--config) when given, else the installed
    file (default_path()) when it exists on this host, else None (the embedded
    default). Always the host's file, never one under --root: a recorded tree
    carries kernel state, not this host's policy."""
    if config:
        return os.path.abspath(config)
    path = default_path()
    return os.path.abspath(path) if os.path.exists(path) else None


def resolve(config: str | None) -> Policy:
    """The policy every command uses: see resolve_path(); Policy.source names it."""
    path = resolve_path(config)
    return load(path) if path is not None else default()


def check_policy_file_security(path: str, st: os.stat_result | None = None) -> None:
    """Refuse a policy file that someone other than root could have written.

    The policy decides which IRQs, queues and processes a root daemon steers:
    a file that is group- or world-writable, or owned by another uid, would
    let that uid steer the host as root (sshd's StrictModes, sudoers checks).
    load() calls this when running as root, on the opened file's fstat (no
    window between the check and the read); the embedded default is exempt.
    `st`: the stat of the file (default: os.stat(path), following symlinks).
    """
    if st is None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise PolicyError(f"cannot read policy: {e.strerror}", file=path) from e
    problems = []
    if st.st_uid != 0:
        problems.append(f"owned by uid {st.st_uid}, not root")
    if st.st_mode & stat.S_IWGRP:
        problems.append("group-writable")
    if st.st_mode & stat.S_IWOTH:
        problems.append("world-writable")
    if problems:
        raise PolicyError(
            f"refusing a policy file that is {' and '.join(problems)} (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): whoever can write it could steer this host as "
            f"root; fix: chown root {path} && chmod go-w {path}", file=path)


def load(path: str) -> Policy:
    """Load a policy file; PolicyError with the file name on any problem.

    Running as root, a file others could write is refused
    (check_policy_file_security).
    """
    try:
        with open(path, "rb") as f:
            if os.geteuid() == 0:
                check_policy_file_security(path, os.fstat(f.fileno()))
            raw = f.read()
    except OSError as e:
        raise PolicyError(f"cannot read policy: {e.strerror}", file=path) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # TOML is UTF-8 (toml.io, "Spec")
        col = e.start - raw.rfind(b"\n", 0, e.start)
        raise PolicyError(f"byte 0x{raw[e.start]:02x} at column {col} is not valid UTF-8 "
                          "(TOML files are UTF-8)", file=path,
                          line=raw.count(b"\n", 0, e.start) + 1) from None
    return loads(text, path)


def loads(text: str, filename: str = "<policy>") -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise PolicyError(f"not valid TOML: {e}", file=filename,
                          line=int(m.group(1)) if m else None) from e
    ctx = _Ctx(filename, text)
    # rq_affinity defaults to 2, so "leave it alone" needs a word of its own
    # (TOML has no null): rq_affinity = "leave"
    leave_rq = False
    tun = data.get("tuning")
    if isinstance(tun, dict) and tun.get("rq_affinity") == "leave":
        tun = dict(tun)
        del tun["rq_affinity"]
        data = {**data, "tuning": tun}
        leave_rq = True
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(Policy):
        if f.name in ("source", "key_lines"):
            continue
        if f.name not in data:
            continue
        raw = data[f.name]
        if f.name == "classes":
            kwargs["classes"] = _classes(raw, ctx)
        elif f.name == "auto_register":
            if not isinstance(raw, list):
                raise ctx.err("auto_register", "expected an array of tables [[auto_register]]")
            kwargs["auto_register"] = tuple(
                _build(AutoRegisterRule, r, f"auto_register[{i}]", ctx) for i, r in enumerate(raw))
        elif f.name == "chain":
            if not isinstance(raw, list):
                raise ctx.err("chain", "expected an array of tables [[chain]]")
            kwargs["chain"] = tuple(_build(ChainRule, r, f"chain[{i}]", ctx)
                                    for i, r in enumerate(raw))
        else:
            kwargs[f.name] = _build(typing.get_type_hints(Policy)[f.name], raw, f.name, ctx)
    for k in data:
        if k not in {f.name for f in dataclasses.fields(Policy)} or k in ("source", "key_lines"):
            raise ctx.err(k, f"unknown section or key {k!r}; known: "
                             + ", ".join(f.name for f in dataclasses.fields(Policy)
                                         if f.name not in ("source", "key_lines")))
    lines = tuple((f"{sect}.{k}", n) for sect, tbl in data.items() if isinstance(tbl, dict)
                  for k in tbl if (n := ctx.line_of(f"{sect}.{k}")) is not None)
    pol = Policy(**kwargs, source=filename, key_lines=lines)
    if leave_rq:
        pol = dataclasses.replace(pol, tuning=dataclasses.replace(pol.tuning, rq_affinity=None))
    _cross_checks(pol, ctx)
    return pol


def _classes(raw: Any, ctx: _Ctx) -> dict[str, ClassPolicy]:
    if not isinstance(raw, dict):
        raise ctx.err("classes", "expected a table")
    out = _default_classes()
    for name, v in raw.items():
        if name not in LATENCY_CLASSES:
            raise ctx.err(f"classes.{name}",
                          f"unknown latency class; expected one of {', '.join(LATENCY_CLASSES)}")
        out[name] = _build(ClassPolicy, v, f"classes.{name}", ctx, base=out[name])
    return out


def _cross_checks(p: Policy, ctx: _Ctx) -> None:
    if p.heat.cool > p.heat.hot:
        raise ctx.err("heat.cool", f"must not exceed heat.hot ({p.heat.hot}): "
                                   "hysteresis needs cool <= hot")
    if p.cpus.completion != "auto" and p.cpus.home != "auto":
        both = CpuSet.parse_list(p.cpus.completion) & CpuSet.parse_list(p.cpus.home)
        if both:
            raise ctx.err("cpus.home", f"CPUs {both} are also completion CPUs")
    if p.metrics.listen.strip() and p.metrics.textfile.strip():
        # node_exporter re-exports the textfile under its own target: every
        # agentlatd series would be scraped twice, and sum() over a fleet doubled
        raise ctx.err("metrics.textfile", "metrics.listen and metrics.textfile are both set: "
                                          "every series would be exported twice (once by the "
                                          "scrape, once through node_exporter); set one of them")


class _Ctx:
    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.lines = text.splitlines()

    def line_of(self, keypath: str) -> int | None:
        """Best-effort line of `keypath` ("tuning.rps" / "classes.normal.nice")."""
        parts = [re.sub(r"\[\d+\]$", "", p) for p in keypath.split(".")]
        leaf = parts[-1]
        section = ".".join(parts[:-1])
        in_section = section == ""
        for i, line in enumerate(self.lines, 1):
            s = line.strip()
            if s.startswith("["):
                hdr = s.strip("[] ")
                in_section = hdr == section
                if hdr == keypath:
                    return i
                continue
            if in_section and re.match(rf"{re.escape(leaf)}\s*=", s):
                return i
        return None

    def err(self, keypath: str, message: str) -> PolicyError:
        return PolicyError(message, file=self.filename, line=self.line_of(keypath), key=keypath)


def _typename(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_typename(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return "an array of strings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp))


def _coerce(tp: Any, v: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in args:
            try:
                return _coerce(a, v, key, ctx)
            except PolicyError:
                continue
        raise ctx.err(key, f"expected {_typename(tp)}, got {v!r}")
    if origin is Literal:
        if v not in typing.get_args(tp):
            raise ctx.err(key, f"expected one of {_typename(tp)}, got {v!r}")
        return v
    if origin is tuple:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ctx.err(key, f"expected an array of strings, got {v!r}")
        return tuple(v)
    if tp is bool:
        if not isinstance(v, bool):
            raise ctx.err(key, f"expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ctx.err(key, f"expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ctx.err(key, f"expected a number, got {v!r}")
        if not math.isfinite(v):  # TOML has inf and nan; no key means either
            raise ctx.err(key, f"expected a finite number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ctx.err(key, f"expected a string, got {v!r}")
        return v
    raise ctx.err(key, f"unsupported type {tp}")


def _build(cls: Any, raw: Any, key: str, ctx: _Ctx, base: Any = None) -> Any:
    if not isinstance(raw, dict):
        raise ctx.err(key, "expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in fields:
            raise ctx.err(f"{key}.{k}", f"unknown key {k!r} in [{key}]; known: "
                                        + ", ".join(fields))
        val = _coerce(hints[k], v, f"{key}.{k}", ctx)
        check = fields[k].metadata.get("check") if fields[k].metadata else None
        if check is not None and val is not None:
            msg = check(val)
            if msg:
                raise ctx.err(f"{key}.{k}", f"{msg}, got {v!r}")
        kwargs[k] = val
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)
