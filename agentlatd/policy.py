"""Policy: /etc/agentlatd.toml, validated into frozen dataclasses.

The embedded default (agentlatd/default.toml) is the shipped etc/agentlatd.toml
with every key commented; the daemon runs with no file at all. A user's file is
merged over the default section by section. Errors name the file, the line
where it can be found, the key path and what was expected; unknown keys are
errors (tuned's profiles silently ignore typos; we don't).

tomllib (stdlib since 3.11) replaces the design card's tomli: same parser,
no dependency.
"""

from __future__ import annotations

import dataclasses
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

LATENCY_CLASSES = ("interactive", "normal", "background")
LatencyClass = Literal["interactive", "normal", "background"]


def _check_cpus(v: str) -> str | None:
    if v == "auto":
        return None
    try:
        CpuSet.parse_list(v)
    except CpuSetError as e:
        return f'expected "auto" or a cpulist like "0-3,8" ({e})'
    return None


def _check_nonneg(v: float) -> str | None:
    return None if v >= 0 else "expected a value >= 0"


def _check_pos(v: float) -> str | None:
    return None if v > 0 else "expected a value > 0"


def _check_share(v: float) -> str | None:
    return None if 0 <= v <= 1 else "expected a share between 0 and 1"


def _check_listen(v: str) -> str | None:
    # same rules as agentlatd.metrics.parse_listen: "HOST:PORT", "[v6]:PORT"
    if v == "":
        return None
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})", v.strip())
    if m is None or int(m.group(2)) > 65535:
        return 'expected "" (off) or "HOST:PORT", e.g. "127.0.0.1:9641"'
    return None


def _check_textfile_interval(v: float) -> str | None:
    return None if 1 <= v <= 3600 else "expected 1..3600 seconds"


def _check_max_agents(v: int) -> str | None:
    return None if 0 <= v <= 1000 else "expected 0..1000 agents"


def _meta(check: typing.Callable[[Any], str | None] | None = None, doc: str = "") -> Any:
    return {"check": check, "doc": doc}


@dataclass(frozen=True, slots=True)
class DaemonPolicy:
    interval: float = field(default=1.0, metadata=_meta(_check_pos))
    state_dir: str = "/run/agentlatd"
    socket: str = "/run/agentlatd/agentlatd.sock"
    socket_group: str = "agentlatd"
    admin_group: str = "agentlatd-admin"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drift: Literal["reassert", "yield"] = "yield"
    irqbalance: Literal["cooperate", "refuse", "ignore"] = "cooperate"
    max_clients: int = field(default=4096, metadata=_meta(_check_pos))


@dataclass(frozen=True, slots=True)
class CpusPolicy:
    completion: str = field(default="auto", metadata=_meta(_check_cpus))
    home: str = field(default="auto", metadata=_meta(_check_cpus))
    # auto: completion CPUs per NUMA node that has devices (at least 1)
    completion_per_node: int = field(default=1, metadata=_meta(_check_pos))
    # auto: completion CPUs as a share of a node's online CPUs (the larger of the two wins)
    completion_share: float = field(default=0.0, metadata=_meta(_check_share))
    # keep SMT siblings of completion CPUs out of the home set
    smt_isolation: bool = True


@dataclass(frozen=True, slots=True)
class DevicesPolicy:
    include: tuple[str, ...] = ()  # globs; non-empty = exactly these devices
    exclude: tuple[str, ...] = ("lo",)
    drivers: tuple[str, ...] = ()  # non-empty = only devices bound to these drivers


@dataclass(frozen=True, slots=True)
class HeatPolicy:
    # heat = irq_weight * (device IRQs/s / irq_scale)
    #      + softirq_weight * (NET_RX+NET_TX+BLOCK+IRQ_POLL+TASKLET softirqs/s / softirq_scale)
    #      + time_weight * (share of time in hardirq+softirq)
    irq_scale: float = field(default=10000.0, metadata=_meta(_check_pos))
    softirq_scale: float = field(default=10000.0, metadata=_meta(_check_pos))
    irq_weight: float = field(default=1.0, metadata=_meta(_check_nonneg))
    softirq_weight: float = field(default=1.0, metadata=_meta(_check_nonneg))
    time_weight: float = field(default=10.0, metadata=_meta(_check_nonneg))
    hot: float = field(default=0.5, metadata=_meta(_check_nonneg))
    cool: float = field(default=0.2, metadata=_meta(_check_nonneg))
    hot_ticks: int = field(default=3, metadata=_meta(_check_pos))
    min_move_interval: float = field(default=10.0, metadata=_meta(_check_nonneg))


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    budget_us: int = field(default=0, metadata=_meta(_check_nonneg))  # step latency budget; 0 = none
    pin: bool = False  # pin to a home CPU
    exclusive: Literal["exclusive", "shared", "off"] = "off"
    to_completion: bool = False  # place on completion CPUs (background work)
    nice: int | None = None
    ioprio: Literal["idle", "be0", "be4", "be7", "none"] = "none"
    pm_qos_resume_latency_us: int | None = None  # per home CPU while an agent lives there


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
    rps_flow_cnt: int = field(default=0, metadata=_meta(_check_nonneg))
    rps_sock_flow_entries: int = field(default=0, metadata=_meta(_check_nonneg))
    # NICs carrying only registered pinned agents' traffic: RPS on their home CPUs
    # ("home") or on the completion CPUs like every NIC ("completion"); model/agent_links.py
    agent_links: Literal["home", "completion"] = "home"
    agent_link_max_pps: int = field(default=20000, metadata=_meta(_check_pos))
    xps: bool = True
    coalesce: bool = True
    # rx-usecs = min(class budgets) * coalesce_budget_share, bounded below by min_rx_usecs
    coalesce_budget_share: float = field(default=0.1, metadata=_meta(_check_share))
    coalesce_min_usecs: int = field(default=8, metadata=_meta(_check_pos))
    threaded_napi: bool = False
    napi_defer_hard_irqs: int | None = None
    gro_flush_timeout: int | None = None
    netdev_budget_usecs: int | None = None  # only when set; bounded 500..8000
    netdev_budget: int | None = None  # only when set; bounded 50..600
    rq_affinity: int | None = field(default=2)


@dataclass(frozen=True, slots=True)
class MetricsPolicy:
    listen: str = field(default="", metadata=_meta(_check_listen))  # "127.0.0.1:9641"; empty = off
    textfile: str = ""  # node_exporter textfile path; empty = off
    textfile_interval: float = field(default=15.0, metadata=_meta(_check_textfile_interval))
    max_agents: int = field(default=32, metadata=_meta(_check_max_agents))  # step series per agent
    per_cpu_softirq_vectors: bool = False  # per-CPU x vector softirq counters (ncpu x 10 series)


@dataclass(frozen=True, slots=True)
class AutoRegisterRule:
    agent_id: str = ""
    latency_class: LatencyClass = "interactive"
    comm: str = ""  # glob on /proc/PID/comm
    exe: str = ""  # glob on the resolved /proc/PID/exe
    cgroup: str = ""  # glob on the cgroup v2 path


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
    source: str = "<embedded default>"

    def klass(self, name: str) -> ClassPolicy:
        return self.classes[name]


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
        with open(path, encoding="utf-8") as f:
            if os.geteuid() == 0:
                check_policy_file_security(path, os.fstat(f.fileno()))
            text = f.read()
    except OSError as e:
        raise PolicyError(f"cannot read policy: {e.strerror}", file=path) from e
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
        if f.name == "source":
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
        else:
            kwargs[f.name] = _build(typing.get_type_hints(Policy)[f.name], raw, f.name, ctx)
    for k in data:
        if k not in {f.name for f in dataclasses.fields(Policy)} or k == "source":
            raise ctx.err(k, f"unknown section or key {k!r}; known: "
                             + ", ".join(f.name for f in dataclasses.fields(Policy)
                                         if f.name != "source"))
    pol = Policy(**kwargs, source=filename)
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
    t = p.tuning
    if t.netdev_budget_usecs is not None and not 500 <= t.netdev_budget_usecs <= 8000:
        raise ctx.err("tuning.netdev_budget_usecs",
                      "expected 500..8000 (latency-bounded batching, never batching off)")
    if t.netdev_budget is not None and not 50 <= t.netdev_budget <= 600:
        raise ctx.err("tuning.netdev_budget", "expected 50..600")
    if t.rq_affinity is not None and t.rq_affinity not in (0, 1, 2):
        raise ctx.err("tuning.rq_affinity", "expected 0, 1 or 2")
    for name, c in p.classes.items():
        if c.nice is not None and not -20 <= c.nice <= 19:
            raise ctx.err(f"classes.{name}.nice", "expected -20..19")
        if c.pm_qos_resume_latency_us is not None and c.pm_qos_resume_latency_us < 0:
            raise ctx.err(f"classes.{name}.pm_qos_resume_latency_us", "expected >= 0")


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
