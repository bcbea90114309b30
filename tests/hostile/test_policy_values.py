"""Policy values a typo, a paste from another document or a hostile edit could produce.

Every key has a type, a range and a unit (agentlatd/policy.py, etc/agentlatd.toml),
enforced when the file is loaded: the error names the file, the line and the key
path. What only the machine can tell (a CPU list naming CPUs this host does not
have) is checked when a plan is made, with the same kind of error. No policy
value may end in a traceback, and no plan may write a value outside the range
of its knob: checked here on the recorded machines in tests/fixtures/machines
(pure planning, nothing is written).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from agentshelpers import daemon, env_for_children, policy_text, wait_until, workdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlatd import policy
from agentlatd.agents import autoreg
from agentlatd.api import protocol
from agentlatd.cpuset import CpuSet
from agentlatd.errors import PolicyError
from agentlatd.model.machine import Machine
from agentlatd.plan.build import make_plan
from agentlatd.plan.changes import Plan
from agentlatd.sysfs.root import Root
from agentlatd.tick import scan_machine

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = sorted(p for p in (REPO / "tests/fixtures/machines").iterdir() if (p / "proc").is_dir())

# a policy that plans every knob, so that every value reaches a Change
ALL_ON = """
[tuning]
irq_affinity = true
rps = true
rps_flow_cnt = 4096
rps_sock_flow_entries = 32768
xps = true
coalesce = true
threaded_napi = true
napi_defer_hard_irqs = 2
gro_flush_timeout = 20000
netdev_budget_usecs = 1000
netdev_budget = 300
rq_affinity = 2
"""


@cache
def machine(path: pathlib.Path) -> Machine:
    return scan_machine(Root(str(path)))


# -- the crashes: a traceback where a policy error belongs -------------------------------

CRASHES = [
    # "²".isdigit() is True, int("²") raises: cpuset.py validated with the one
    ('[cpus]\ncompletion = "\u00b2"\n', "cpus.completion"),
    ('[cpus]\nhome = "0-\u00b3"\n', "cpus.home"),
    ('[cpus]\nhome = "0-3:\u00b9"\n', "cpus.home"),
    ('[cpus]\ncompletion = "1\u2460"\n', "cpus.completion"),
    # int() takes every Nd digit: "١" was CPU 1, "１" too
    ('[cpus]\ncompletion = "\u0661"\n', "cpus.completion"),
    ('[cpus]\nhome = "\uff11-\uff12"\n', "cpus.home"),
    ('[cpus]\ncompletion = "\U0001d7d9"\n', "cpus.completion"),
]


@pytest.mark.parametrize(("text", "key"), CRASHES, ids=[k + ":" + ascii(t[-8:-2]) for t, k in CRASHES])
def test_non_ascii_digits_in_a_cpu_list_are_a_policy_error_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(PolicyError) as ei:
        policy.loads(text, "/etc/agentlatd.toml")
    assert ei.value.key == key and ei.value.line == 2, ei.value
    assert str(ei.value).startswith(f"/etc/agentlatd.toml:2: [{key}]")


def test_a_non_utf8_byte_in_the_policy_is_a_policy_error_with_its_line(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "agentlatd.toml"
    f.write_bytes(b'[daemon]\ninterval = 1.0\nlog_level = "info\xff"\n')
    f.chmod(0o644)
    with pytest.raises(PolicyError) as ei:
        policy.load(str(f))
    assert ei.value.line == 3 and "UTF-8" in str(ei.value), ei.value
    # and `agentlatd plan` says so in one line, no traceback
    p = subprocess.run([sys.executable, "-m", "agentlatd", "plan", "--config", str(f), "--root",
                        str(MACHINES[0])], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert f"{f}:3" in p.stderr, p.stderr


# -- nonsense accepted: each must be refused with its key path ---------------------------

NONSENSE = [
    ("[daemon]\ninterval = inf\n", "daemon.interval"),
    ("[daemon]\ninterval = nan\n", "daemon.interval"),
    ("[daemon]\ninterval = 1e12\n", "daemon.interval"),
    ("[daemon]\ninterval = 0.001\n", "daemon.interval"),
    ('[daemon]\nstate_dir = ""\n', "daemon.state_dir"),
    ('[daemon]\nstate_dir = "run/agentlatd"\n', "daemon.state_dir"),
    ('[daemon]\nstate_dir = "/run/a\\u0000b"\n', "daemon.state_dir"),
    ('[daemon]\nsocket = ""\n', "daemon.socket"),
    ('[daemon]\nsocket = "/run/' + "s" * 120 + '.sock"\n', "daemon.socket"),
    ("[daemon]\nmax_clients = 9223372036854775807\n", "daemon.max_clients"),
    ('[daemon]\nsocket_group = ""\n', "daemon.socket_group"),
    ('[daemon]\nadmin_group = "a b"\n', "daemon.admin_group"),
    ('[cpus]\ncompletion = "0-99999"\n', "cpus.completion"),
    ('[cpus]\nhome = "100000"\n', "cpus.home"),
    ("[cpus]\ncompletion_per_node = 9223372036854775807\n", "cpus.completion_per_node"),
    ("[cpus]\ncompletion_share = nan\n", "cpus.completion_share"),
    ("[heat]\nhot = inf\n", "heat.hot"),
    ("[heat]\ncool = nan\n", "heat.cool"),
    ("[heat]\nirq_scale = inf\n", "heat.irq_scale"),
    ("[heat]\ntime_weight = 1e300\n", "heat.time_weight"),
    ("[heat]\nhot_ticks = 9223372036854775807\n", "heat.hot_ticks"),
    ("[heat]\nmin_move_interval = inf\n", "heat.min_move_interval"),
    ("[tuning]\ngro_flush_timeout = -1\n", "tuning.gro_flush_timeout"),
    ("[tuning]\ngro_flush_timeout = 9223372036854775807\n", "tuning.gro_flush_timeout"),
    ("[tuning]\nnapi_defer_hard_irqs = -5\n", "tuning.napi_defer_hard_irqs"),
    ("[tuning]\nnapi_defer_hard_irqs = 2147483648\n", "tuning.napi_defer_hard_irqs"),
    ("[tuning]\nrps_flow_cnt = -1\n", "tuning.rps_flow_cnt"),
    ("[tuning]\nrps_flow_cnt = 9223372036854775807\n", "tuning.rps_flow_cnt"),
    ("[tuning]\nrps_sock_flow_entries = 536870913\n", "tuning.rps_sock_flow_entries"),
    ("[tuning]\ncoalesce_min_usecs = 9223372036854775807\n", "tuning.coalesce_min_usecs"),
    ("[tuning]\ncoalesce_budget_share = inf\n", "tuning.coalesce_budget_share"),
    ("[tuning]\nagent_link_max_pps = 9223372036854775807\n", "tuning.agent_link_max_pps"),
    ("[classes.interactive]\nbudget_us = 9223372036854775807\n", "classes.interactive.budget_us"),
    ("[classes.normal]\npm_qos_resume_latency_us = 2147483647\n",
     "classes.normal.pm_qos_resume_latency_us"),
    ('[devices]\ninclude = ["eth\\u0000"]\n', "devices.include"),
    ('[metrics]\ntextfile = "relative.prom"\n', "metrics.textfile"),
    ('[[auto_register]]\nagent_id = "a\\nb"\ncomm = "x"\n', "auto_register[0].agent_id"),
    ('[[auto_register]]\nagent_id = "' + "x" * 129 + '"\ncomm = "x"\n',
     "auto_register[0].agent_id"),
    ('[[auto_register]]\nagent_id = "\\u001b[2J"\ncomm = "x"\n', "auto_register[0].agent_id"),
]


@pytest.mark.parametrize(("text", "key"), NONSENSE, ids=[k for _, k in NONSENSE])
def test_nonsense_policy_values_are_refused_with_their_key_path(text: str, key: str) -> None:
    with pytest.raises(PolicyError) as ei:
        policy.loads(text, "/etc/agentlatd.toml")
    e = ei.value
    assert e.key == key, e
    assert e.line is not None and str(e).startswith(f"/etc/agentlatd.toml:{e.line}: [{key}]"), e


def test_a_cpu_list_naming_cpus_this_machine_lacks_is_an_error_naming_the_key() -> None:
    m = machine(REPO / "tests/fixtures/machines/cloud-vm-small")
    n = len(m.topology.possible)
    for key, text in (("cpus.home", f'[cpus]\ncompletion = "0"\nhome = "{n + 3}"\n'),
                      ("cpus.completion", f'[cpus]\ncompletion = "0,{n}"\n')):
        pol = policy.loads(text, "/etc/agentlatd.toml")
        with pytest.raises(PolicyError) as ei:
            make_plan(m, pol)
        assert ei.value.key == key, ei.value
        assert str(n + 3 if key == "cpus.home" else n) in str(ei.value)
        assert "/etc/agentlatd.toml" in str(ei.value)


# -- the property: mutated policies never crash, never plan out of range ---------------

# the range each planned knob's value must stay in (what the kernel accepts, or the
# policy's tighter bound where the kernel's is not a sane setting)
S32_MAX = (1 << 31) - 1


def _int_in(lo: int, hi: int) -> Callable[[str, Machine], bool]:
    return lambda v, m: re.fullmatch(r"[0-9]+", v) is not None and lo <= int(v) <= hi


def _cpus_on(v: str, m: Machine) -> bool:
    try:
        cpus = CpuSet.parse_mask(v)
    except ValueError:
        return False
    return bool(cpus) and cpus <= m.topology.possible


def _coalesce(v: str, m: Machine) -> bool:
    mm = re.fullmatch(r"rx-usecs=([0-9]+)", v)
    return mm is not None and 1 <= int(mm[1]) <= policy.RX_USECS_MAX


def _irq_affinity(v: str, m: Machine) -> bool:
    try:
        cpus = CpuSet.parse_list(v)
    except ValueError:
        return False
    return bool(cpus) and cpus <= m.topology.possible


RANGES: dict[str, Callable[[str, Machine], bool]] = {
    "net.napi_defer_hard_irqs": _int_in(0, S32_MAX),
    "net.gro_flush_timeout": _int_in(0, policy.GRO_FLUSH_TIMEOUT_MAX_NS),
    "net.rps_flow_cnt": _int_in(0, policy.RPS_FLOW_CNT_MAX),
    "net.core.rps_sock_flow_entries": _int_in(0, 1 << 29),
    "net.core.netdev_budget_usecs": _int_in(500, 8000),
    "net.core.netdev_budget": _int_in(50, 600),
    "block.rq_affinity": _int_in(0, 2),
    "net.threaded": _int_in(0, 1),
    "net.coalesce": _coalesce,
    "net.rps_cpus": _cpus_on,
    "net.xps_cpus": _cpus_on,
    "irq.affinity": _irq_affinity,
}


def _check_plan(plan: Plan, m: Machine) -> None:
    for c in plan.changes:
        check = RANGES.get(c.knob)
        if check is not None:
            assert check(c.desired, m), (c.knob, c.target, c.desired)
    assert plan.home_cpus <= m.topology.possible and plan.completion_cpus <= m.topology.possible


NASTY: list[Any] = [0, -1, 1, 2, 7, 1 << 31, (1 << 31) - 1, 1 << 32, 1 << 62, (1 << 63) - 1,
                    -(1 << 63), 0.0, -0.5, 0.5, 1.5, 1e-9, 1e300, math.inf, -math.inf, math.nan,
                    True, False, "", "auto", "0", "0-1", "1,0", "0-3:2", "\u00b2", "\u0661",
                    "\uff11", "0-\u0663", "0-9999", "8192", "/", "/tmp/x", "rel", "a\x00b",
                    "a\nb", "\x1b[2J", "x" * 200, "\ud7ff", [], ["eth0"], ["\u00b2"], ["a\x00"]]
KEYS = ["daemon.interval", "daemon.state_dir", "daemon.socket", "daemon.socket_group",
        "daemon.admin_group", "daemon.max_clients", "daemon.log_level", "cpus.completion",
        "cpus.home", "cpus.completion_per_node", "cpus.completion_share", "cpus.smt_isolation",
        "devices.include", "devices.exclude", "devices.drivers", "devices.agent_nameable",
        "heat.irq_scale", "heat.softirq_scale", "heat.irq_weight", "heat.softirq_weight",
        "heat.time_weight", "heat.hot", "heat.cool", "heat.hot_ticks", "heat.min_move_interval",
        "classes.interactive.budget_us", "classes.normal.nice", "classes.background.nice",
        "classes.interactive.pm_qos_resume_latency_us", "classes.background.ioprio",
        "tuning.rps_flow_cnt", "tuning.rps_sock_flow_entries", "tuning.agent_link_max_pps",
        "tuning.coalesce_budget_share", "tuning.coalesce_min_usecs",
        "tuning.napi_defer_hard_irqs", "tuning.gro_flush_timeout", "tuning.netdev_budget_usecs",
        "tuning.netdev_budget", "tuning.rq_affinity", "metrics.listen", "metrics.textfile",
        "auto_register.agent_id", "auto_register.comm"]


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                             for c in v) + '"'
    return "[" + ", ".join(_toml(x) for x in v) + "]"


def _policy_text(mutations: dict[str, Any]) -> str:
    sections: dict[str, list[str]] = {"tuning": ALL_ON.strip().splitlines()[1:]}
    for key, v in mutations.items():
        sect, _, leaf = key.rpartition(".")
        if sect == "auto_register":
            sections.setdefault(sect, ['comm = "agent-*"'])
        lines = sections.setdefault(sect, [])
        lines[:] = [ln for ln in lines if not ln.startswith(f"{leaf} =")] + [f"{leaf} = {_toml(v)}"]
    return "".join(("[[auto_register]]" if s == "auto_register" else f"[{s}]") + "\n"
                   + "\n".join(ls) + "\n" for s, ls in sections.items())


def _field(key: str) -> dataclasses.Field[Any] | None:
    """The policy dataclass field behind a key path of KEYS."""
    sect, _, leaf = key.rpartition(".")
    cls: Any = {"daemon": policy.DaemonPolicy, "cpus": policy.CpusPolicy,
                "devices": policy.DevicesPolicy, "heat": policy.HeatPolicy,
                "tuning": policy.TuningPolicy, "metrics": policy.MetricsPolicy,
                "auto_register": policy.AutoRegisterRule}.get(sect.split(".")[0])
    if sect.startswith("classes."):
        cls = policy.ClassPolicy
    return next((f for f in dataclasses.fields(cls) if f.name == leaf), None) if cls else None


@st.composite
def _value(draw: st.DrawFn, key: str) -> Any:
    """A nasty value, or one at or just beyond the edges of the key's range."""
    f = _field(key)
    rng = f.metadata.get("range") if f is not None and f.metadata else None
    if rng is None or draw(st.booleans()):
        return draw(st.sampled_from(NASTY))
    lo, hi = rng
    if isinstance(lo, int) and isinstance(hi, int):
        return draw(st.sampled_from([lo, hi, lo - 1, hi + 1]) | st.integers(lo, hi))
    return draw(st.sampled_from([lo, hi]) | st.floats(lo, hi))


_mutations = st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: _value(k) for k in keys}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations, st.sampled_from(MACHINES))
def test_mutated_policies_are_an_error_or_a_plan_within_every_knobs_range(
        mutations: dict[str, Any], path: pathlib.Path) -> None:
    text = _policy_text(mutations)
    try:
        pol = policy.loads(text, "fuzz.toml")
    except PolicyError as e:
        assert str(e).startswith("fuzz.toml") and e.key, e
        return
    m = machine(path)
    try:
        plan = make_plan(m, pol)
    except PolicyError as e:  # only what the machine can tell: CPUs it lacks
        assert e.key in ("cpus.home", "cpus.completion"), e
        return
    _check_plan(plan, m)
    assert math.isfinite(pol.daemon.interval) and pol.daemon.interval > 0
    assert pol.daemon.state_dir.startswith("/")


# -- the daemon: refuses to start on such a policy, refuses to reload to one --------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (agentlatd run)")


def _absent_cpu() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        return max(CpuSet.parse_list(f.read())) + 100


@needs_root
def test_the_daemon_refuses_to_start_on_a_policy_naming_cpus_this_host_lacks() -> None:
    cpu = _absent_cpu()
    with workdir() as d:
        cfg = d / "agentlatd.toml"
        cfg.write_text(policy_text(home=str(cpu)))
        r = subprocess.run([sys.executable, "-m", "agentlatd", "run", "--config", str(cfg),
                            "--state-dir", str(d / "state"), "--socket", str(d / "s.sock")],
                           capture_output=True, text=True, timeout=60, env=env_for_children(),
                           check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "[cpus.home]" in r.stderr and str(cpu) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        assert not (d / "s.sock").exists()


@needs_root
def test_sighup_reload_refuses_a_policy_naming_cpus_this_host_lacks_and_keeps_serving() -> None:
    cpu = _absent_cpu()
    with workdir() as d, daemon(d, policy_text()) as dm:
        dm.config.write_text(policy_text(completion=f"0,{cpu}"))
        dm.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in dm.log, 10, what="reload refused")
        line = dm.log.split("reload refused")[1].splitlines()[0]
        assert "[cpus.completion]" in line and str(cpu) in line, line
        tick = dm.status()["tick"]
        wait_until(lambda: dm.status()["tick"] >= tick + 2, 10, what="ticks go on")
        assert dm.status()["tuner_error"] == ""
        assert dm.request("ping")["ok"]


def test_auto_registered_agent_ids_keep_the_protocols_name_rule() -> None:
    rule = policy.AutoRegisterRule(comm="agent-*")
    for comm in ("agent-\x1b[2J", "agent-\n", "agent-\u202e", "", "a" * 15):
        aid = autoreg.agent_id_for(rule, comm, 4194303)
        assert aid.isprintable() and 0 < len(aid) <= protocol.MAX_ID_LEN, aid
    assert protocol.MAX_ID_LEN == policy.AGENT_ID_MAX


def test_every_policy_key_has_a_type_a_range_and_a_unit() -> None:
    classes = [policy.DaemonPolicy, policy.CpusPolicy, policy.DevicesPolicy, policy.HeatPolicy,
               policy.ClassPolicy, policy.TuningPolicy, policy.MetricsPolicy,
               policy.AutoRegisterRule]
    hints = {c: typing.get_type_hints(c) for c in classes}
    missing = []
    for c in classes:
        for f in dataclasses.fields(c):
            tp = hints[c][f.name]
            union = typing.get_origin(tp) in (typing.Union, types.UnionType)
            args = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
            if all(a is bool or typing.get_origin(a) is typing.Literal for a in args):
                continue  # the type is the range
            meta = f.metadata or {}
            if meta.get("check") is None or not meta.get("unit"):
                missing.append(f"{c.__name__}.{f.name}")
    assert not missing, missing
