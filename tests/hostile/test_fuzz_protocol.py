"""Fuzzing the parsers that take hostile input: the socket protocol
(agentlatd.api.protocol.decode), the policy loader (agentlatd.policy.loads) and
the journal parser (agentlatd.apply.journal_read.parse), with hypothesis.

The contract each must keep for ANY input: return a value, or raise its own
error type carrying a code/sentence; never another exception (a TypeError or
KeyError would be an "internal" answer on the socket, a traceback in the CLI).
Coverage-guided fuzzing with atheris: tests/hostile/fuzz_atheris.py (runs here
when atheris is installed; see docs/hostile.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlatd.api import protocol
from agentlatd.api.protocol import Envelope, ProtocolError, Register, Step
from agentlatd.apply import journal_read
from agentlatd.errors import JournalError, PolicyError
from agentlatd.policy import Policy, loads
from agentlatd.sample.tasks import PID_MAX

CODES = {protocol.BAD_JSON, protocol.BAD_REQUEST, protocol.TOO_LARGE,
         protocol.UNSUPPORTED_VERSION, protocol.UNKNOWN_OP}
FIELDS = ["v", "op", "id", "agent_id", "pid", "latency_class", "deadline_ns", "budget_ns",
          "numa_node", "devices", "starttime", "count", "hist", "samples_ns", "sum_ns", "max_ns",
          "dropped"]
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalar = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_value = st.recursive(json_scalar, lambda kids: st.lists(kids, max_size=6)
                          | st.dictionaries(st.text(max_size=8), kids, max_size=6), max_leaves=30)
interesting = st.one_of(
    json_value,
    st.sampled_from([1, 0, -1, PID_MAX - 1, PID_MAX, 1 << 62, 1 << 63, True, False, 1.0,
                     "1", "", "x" * 129, "\x00", "\ud800", "../../etc/passwd", [], {},
                     "interactive", "background", "normal", "register", "step", "ping"]),
    st.dictionaries(st.from_regex(r"[0-9]{1,6}", fullmatch=True),
                    st.integers(-5, 1 << 41) | st.booleans() | st.floats(), max_size=8),
    st.lists(st.integers(-5, 1 << 41), max_size=20),
)
requests = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), interesting, max_size=10)


def _check(line: bytes) -> Envelope | None:
    try:
        env = protocol.decode(line)
    except ProtocolError as e:
        assert e.code in CODES, e.code
        assert isinstance(e.message, str) and len(e.message) > 10
        assert e.req_id is None or isinstance(e.req_id, int | str)
        # the answer the server sends is one valid JSON line
        out = protocol.error(e.req_id, e.code, e.message)
        assert out.endswith(b"\n") and out.count(b"\n") == 1
        assert json.loads(out)["error"]["code"] == e.code
        return None
    assert env.op in protocol.OPS
    assert isinstance(env.req_id, int | str | type(None))
    return env


def _check_bounds(env: Envelope) -> None:
    req = env.req
    if isinstance(req, Register):
        assert isinstance(req.agent_id, str) and 0 < len(req.agent_id) <= protocol.MAX_ID_LEN
        assert req.agent_id.isprintable()
        assert req.pid is None or (type(req.pid) is int and 0 < req.pid < PID_MAX)
        assert req.latency_class in ("interactive", "normal", "background")
        assert all(isinstance(d, str) and d.isprintable() for d in req.devices)
        for v in (req.deadline_ns, req.budget_ns, req.numa_node, req.starttime):
            assert v is None or (type(v) is int and v >= 0)
    elif isinstance(req, Step):
        assert type(req.count) is int and 0 <= req.count <= protocol.MAX_STEP_COUNT
        assert sum(req.hist.values()) == req.count
        assert all(type(k) is int and type(c) is int and c > 0 for k, c in req.hist.items())
        assert req.sum_ns >= 0 and req.max_ns >= 0


@SETTINGS
@given(st.binary(max_size=2000))
def test_decode_never_raises_anything_but_a_protocol_error_on_bytes(data: bytes) -> None:
    _check(data)


@SETTINGS
@given(requests)
def test_decode_of_any_json_object_is_a_bounded_request_or_a_coded_error(obj: dict[str, Any]) -> None:
    try:
        line = json.dumps(obj).encode()
    except (ValueError, UnicodeEncodeError):
        return
    env = _check(line)
    if env is not None:
        _check_bounds(env)


@SETTINGS
@given(requests, st.integers(0, 200), st.binary(max_size=4))
def test_decode_of_damaged_json_is_a_coded_error(obj: dict[str, Any], cut: int,
                                                 junk: bytes) -> None:
    line = json.dumps(obj).encode()
    _check(line[:cut] + junk + line[cut:])
    _check(line[:cut])


@SETTINGS
@given(st.text(min_size=1, max_size=protocol.MAX_ID_LEN).filter(str.isprintable),
       st.none() | st.integers(1, PID_MAX - 1), st.sampled_from(["interactive", "normal",
                                                                   "background"]),
       st.integers(0, 1 << 40) | st.text(max_size=protocol.MAX_ID_LEN))
def test_valid_requests_round_trip(agent_id: str, pid: int | None, klass: str,
                                   req_id: int | str) -> None:
    env = protocol.decode(protocol.request("register", req_id, agent_id=agent_id, pid=pid,
                                           latency_class=klass))
    assert env.req_id == req_id and isinstance(env.req, Register)
    assert (env.req.agent_id, env.req.pid, env.req.latency_class) == (agent_id, pid, klass)


def test_the_line_cap_holds_before_parsing() -> None:
    huge = b'{"v":1,"op":"ping","pad":"' + b"a" * protocol.MAX_LINE + b'"}'
    with pytest.raises(ProtocolError) as ei:
        protocol.decode(huge)
    assert ei.value.code == protocol.TOO_LARGE


# -- the policy loader -----------------------------------------------------------


@SETTINGS
@given(st.text(max_size=600))
def test_policy_loads_of_any_text_is_a_policy_or_a_policy_error(text: str) -> None:
    try:
        pol = loads(text, "fuzz.toml")
    except PolicyError as e:
        assert str(e).startswith("fuzz.toml")
        return
    assert isinstance(pol, Policy)


SECTIONS = {
    "daemon": ["interval", "state_dir", "socket", "socket_group", "admin_group", "log_level",
               "drift", "irqbalance", "max_clients"],
    "cpus": ["completion", "home", "completion_per_node", "completion_share", "smt_isolation"],
    "devices": ["include", "exclude", "drivers"],
    "heat": ["irq_scale", "softirq_scale", "irq_weight", "softirq_weight", "time_weight", "hot",
             "cool", "hot_ticks", "min_move_interval"],
    "tuning": ["irq_affinity", "rps", "rps_flow_cnt", "rps_sock_flow_entries", "xps", "coalesce",
               "coalesce_budget_share", "coalesce_min_usecs", "threaded_napi",
               "napi_defer_hard_irqs", "gro_flush_timeout", "netdev_budget_usecs",
               "netdev_budget", "rq_affinity"],
    "metrics": ["listen", "textfile"],
    "classes.interactive": ["budget_us", "pin", "exclusive", "to_completion", "nice", "ioprio",
                            "pm_qos_resume_latency_us"],
    "classes.bogus": ["pin"],
}
toml_scalar = (st.integers(-(1 << 63), (1 << 63) - 1) | st.booleans()
               | st.floats(allow_nan=False, allow_infinity=False)
               | st.sampled_from(["auto", "0-3,8", "0-", "1-0", "99999999", "", "debug",
                                  "yield", "reassert", "exclusive", "shared", "off", "be7",
                                  "127.0.0.1:9641", "[::1]:0", "host:99999", "lo", "*"])
               | st.text(max_size=12))
toml_value = toml_scalar | st.lists(st.text(max_size=8) | st.integers(), max_size=4)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml(x) for x in v) + "]"


@st.composite
def policies(draw: st.DrawFn) -> str:
    out = []
    for sec in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=5, unique=True)):
        out.append(f"[{sec}]")
        keys = draw(st.lists(st.sampled_from(SECTIONS[sec]) | st.text("abcxyz_", min_size=1,
                                                                         max_size=6),
                             max_size=6, unique=True))
        for k in keys:
            try:
                out.append(f"{k} = {_toml(draw(toml_value))}")
            except (ValueError, UnicodeEncodeError):
                continue
    if draw(st.booleans()):
        out.append("[[auto_register]]")
        out.append(f"comm = {_toml(draw(st.text(max_size=8)))}")
        out.append(f"latency_class = {_toml(draw(st.sampled_from(['interactive', 'x'])))}")
    return "\n".join(out) + "\n"


@SETTINGS
@given(policies())
def test_policy_loads_of_structured_toml_is_a_policy_or_a_policy_error(text: str) -> None:
    try:
        pol = loads(text, "fuzz.toml")
    except PolicyError as e:
        msg = str(e)
        assert msg.startswith("fuzz.toml") and len(msg) > 15
        return
    # what validated is within the documented bounds
    assert pol.daemon.interval > 0 and pol.daemon.max_clients > 0
    assert pol.heat.cool <= pol.heat.hot
    assert pol.tuning.rq_affinity in (None, 0, 1, 2)
    for c in pol.classes.values():
        assert c.nice is None or -20 <= c.nice <= 19


# -- the journal parser ------------------------------------------------------------


@SETTINGS
@given(st.text(max_size=800) | requests.map(json.dumps)
       | st.dictionaries(st.sampled_from(["version", "root", "entries", "complete", "pid",
                                          "netns", "boot_id"]), json_value, max_size=7
                         ).map(json.dumps))
def test_journal_parse_of_anything_is_a_journal_or_a_journal_error(text: str) -> None:
    try:
        j = journal_read.parse("/fuzz/journal.json", text)
    except JournalError as e:
        assert "/fuzz/journal.json" in str(e)
        return
    assert isinstance(j.root, str)
    assert all(isinstance(e.original, str) for e in j.entries)


# -- atheris (coverage-guided), where it is installed ----------------------------------


@pytest.mark.parametrize("target", ["protocol", "policy", "journal"])
def test_atheris_harness_runs_clean(target: str) -> None:
    py = os.environ.get("AGENTLATD_ATHERIS_PYTHON", sys.executable)
    probe = subprocess.run([py, "-c", "import atheris"], capture_output=True, timeout=60,
                           check=False)
    if probe.returncode != 0:
        pytest.skip("atheris is not installed for this interpreter (pip install atheris, or "
                    "point AGENTLATD_ATHERIS_PYTHON at a python that has it)")
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([py, os.path.join(here, "fuzz_atheris.py"), target, "-runs=20000",
                        "-max_len=4096"], capture_output=True, text=True, timeout=600,
                       env=env, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Done 20000 runs" in p.stderr, p.stderr[-2000:]
