"""No client input leaves the per-connection error path.

A real `agentlatd run` (tests/integration/agentshelpers.py: a policy that
steers nothing on the host) is fed every field of every operation with values
a parser might convert differently from how it validated them: digits of
every Unicode category (str.isdigit() is true for "²", int() accepts every
Nd digit such as "١" or "１" but not "²"), huge and negative numbers, wrong
JSON types, duplicate keys. Each line must get one answer (ok, or an error
with a code and a sentence) and the daemon must never exit: a single request
that escapes to the main loop rolls back every change and stops the daemon
for every other client (under systemd five of them exhaust the restart limit).

The registrations target a `sleep` child of this test (root may register any
process), so `step` and `unregister` reach their handlers, not just the
decoder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import selectors
import subprocess
import threading
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from agentshelpers import (
    Agent,
    all_on,
    current_affinity,
    daemon,
    needs_2cpus,
    policy_text,
    thread_affinities,
    wait_until,
    workdir,
)
from hostilehelpers import connect, is_error, read_answers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlatd import stepstats as stats
from agentlatd.api import protocol, server
from agentlatd.sample import tasks
from agentlatd.sysfs.root import Root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon restores "
                                                          "affinity of other processes)")


def _digits_of_every_category() -> list[str]:
    """One character of each Unicode category that has numeric value or claims to be a
    digit: Nd (decimal: int() takes it), No (superscripts, circled: isdigit() but not
    int()), Nl (Roman numerals: isnumeric() only); plus fullwidth and Arabic-Indic."""
    seen: dict[str, str] = {}
    for cp in range(0x80, 0x30000):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        key = f"{cat}:{ch.isdecimal()}:{ch.isdigit()}:{ch.isnumeric()}"
        if cat in ("Nd", "No", "Nl") and key not in seen:
            seen[key] = ch
    return [*seen.values(), "\u0661", "\uff11", "\u00b2", "\u2460", "\u2167", "\U0001d7d9"]


NUMERIC_CHARS = _digits_of_every_category()


def _nasty_values() -> list[Any]:
    out: list[Any] = [None, True, False, 0, -1, 1, 1 << 31, 1 << 62, 1 << 63, 1 << 64, -(1 << 63),
                      10 ** 400, 1.5, -0.0, 1e308, "", " ", "1", "-1", "0x10", "1e3", "\x00",
                      "\ud7ff", "x" * 129, "x" * 5000, [], [1], ["a"], [[]], {}, {"1": 1},
                      {"a": "b"}, "interactive", "eth0", "lo"]
    for ch in NUMERIC_CHARS:
        out += [ch, ch * 3, "1" + ch, [ch], {ch: 1}, {"1" + ch: 1}, {ch * 2: 1}]
    return out


NASTY = _nasty_values()
OPS_FIELDS: dict[str, list[str]] = {
    "register": ["agent_id", "pid", "latency_class", "deadline_ns", "budget_ns", "numa_node",
                 "devices", "starttime"],
    "unregister": ["pid", "agent_id"],
    "step": ["pid", "agent_id", "count", "hist", "samples_ns", "sum_ns", "max_ns", "dropped"],
    "agents": [], "status": [], "ping": [],
}
ENVELOPE_FIELDS = ["v", "op", "id"]


@contextlib.contextmanager
def _sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "300"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def _lines(pid: int) -> Iterator[tuple[bytes, bool]]:
    """(line, must be refused): every field of every op set to every nasty value, the
    others valid. A hist bucket or count spelled with a non-ASCII character must be
    refused: JSON numbers and the protocol's bucket keys are ASCII."""
    for op, fields in OPS_FIELDS.items():
        base: dict[str, Any] = {"v": 1, "op": op, "id": 1}
        if op in ("register", "unregister", "step"):
            base["pid"] = pid
        if op == "register":
            base["agent_id"] = "fuzz"
        if op == "step":
            base["hist"] = {"3": 1}
        for f in [*fields, *ENVELOPE_FIELDS]:
            for v in NASTY:
                msg = {**base, f: v}
                refuse = (op == "step" and f == "hist" and isinstance(v, dict)
                          and not all(k.isascii() for k in v))
                with contextlib.suppress(ValueError, UnicodeEncodeError):
                    yield json.dumps(msg, ensure_ascii=False).encode("utf-8", "surrogatepass"), refuse
    # duplicate keys: a later key must never smuggle past an earlier one's check
    for op, f in itertools.product(OPS_FIELDS, ["op", "v", "pid", "hist", "agent_id", "id"]):
        yield (f'{{"v":1,"op":"{op}","pid":{pid},"agent_id":"fuzz","hist":{{"3":1}},'
               f'"{f}":"\u00b2","{f}":{{"\u00b2":1}}}}').encode(), True
        yield f'{{"v":1,"op":"{op}","pid":{pid},"{f}":1,"{f}":2}}'.encode(), True


def _feed(sock_path: str, lines: list[bytes], proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    with connect(sock_path) as s:
        for i in range(0, len(lines), 200):
            chunk = lines[i:i + 200]
            s.sendall(b"\n".join(chunk) + b"\n")
            got, closed = read_answers(s, len(chunk), timeout=20)
            assert proc.poll() is None, f"daemon exited with {proc.returncode} at lines {i}.."
            assert not closed and len(got) == len(chunk), (i, len(got), chunk[len(got):][:1])
            answers += got
    return answers


def test_a_superscript_digit_hist_bucket_does_not_stop_the_daemon() -> None:
    # "²".isdigit() is True and int("²") raises ValueError: the step decoder
    # validated with the one and converted with the other
    line = '{"v":1,"op":"step","id":9,"hist":{"\u00b2":1}}\n'.encode()
    with workdir() as d, daemon(d, policy_text()) as dm:
        with connect(dm.socket) as s:
            s.sendall(line)
            got, closed = read_answers(s, 1, timeout=10)
        assert dm.proc.poll() is None, f"daemon exited with {dm.proc.returncode}:\n{dm.log}"
        assert got and is_error(got[0], "bad_request") and got[0]["id"] == 9, got
        assert not closed
        assert dm.request("ping")["ok"]


def test_unicode_digits_huge_numbers_wrong_types_and_duplicate_keys_never_stop_the_daemon() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm, _sleeper() as child:
        cases = list(_lines(child.pid))
        lines = [ln for ln, _ in cases]
        answers = _feed(str(dm.socket), lines, dm.proc)
        assert len(answers) == len(lines) > 3000
        for (line, refuse), ans in zip(cases, answers, strict=True):
            assert ans.get("ok") is True or is_error(ans), (line[:120], ans)
            # no request may reach a handler's unexpected-exception path
            assert ans.get("error", {}).get("code") != "internal", (line[:120], ans)
            if refuse:
                assert is_error(ans, "bad_request"), (line[:120], ans)
        assert dm.request("ping")["ok"]
        assert dm.proc.poll() is None
        assert "Traceback" not in dm.log, dm.log[-3000:]


def test_an_unexpected_exception_in_decoding_or_a_handler_is_an_internal_answer_on_that_connection(
        monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # the dispatch itself, in-process: whatever a future decoder or handler bug
    # raises, the request is answered "internal", the traceback is logged, and
    # the next request on the same connection is served
    real_decode = protocol.decode

    def decode(line: bytes) -> protocol.Envelope:
        if b"decoder-bug" in line:
            raise ValueError("invalid literal for int() with base 10: '\u00b2'")
        return real_decode(line)

    def boom(c: server.Conn, env: protocol.Envelope) -> Any:
        raise KeyError("handler bug")

    monkeypatch.setattr(protocol, "decode", decode)
    sel = selectors.DefaultSelector()
    srv = server.Server(sel, server.bind_socket(str(tmp_path / "s.sock")),
                        {"ping": lambda c, env: {"pong": True}, "status": boom})
    lines = [b'{"v":1,"op":"ping","id":"decoder-bug"}', b'{"v":1,"op":"status","id":2}',
             b'{"v":1,"op":"ping","id":3}']
    try:
        with connect(tmp_path / "s.sock") as s:
            s.sendall(b"\n".join(lines) + b"\n")
            got: list[dict[str, Any]] = []
            end = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < end:
                for key, mask in sel.select(0.05):
                    key.data(mask)
                srv.process()
                s.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    got += [json.loads(x) for x in s.recv(1 << 16).splitlines()]
    finally:
        srv.close()
        sel.close()
    assert [a.get("error", {}).get("code") for a in got] == ["internal", "internal", None], got
    assert [a["id"] for a in got] == [None, 2, 3]
    assert got[2]["ok"] and got[2]["result"] == {"pong": True}
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "decoding" in logged and "op 'status'" in logged, logged
    assert sum(1 for r in caplog.records if r.exc_info) == 2


# -- the decoder, property-based ---------------------------------------------------

# digits as a client might spell them: ASCII, one of each category/behaviour
# found above, or any character of the numeric categories
_digit = (st.sampled_from("0123456789") | st.sampled_from(NUMERIC_CHARS)
          | st.characters(categories=["Nd", "No", "Nl"]))
_numeric_text = st.text(_digit, min_size=1, max_size=5)
_field_value = (_numeric_text | st.integers(-(1 << 70), 1 << 70) | st.none() | st.booleans()
                | st.floats() | st.lists(_numeric_text | st.integers(-5, 1 << 41), max_size=4)
                | st.dictionaries(_numeric_text, st.integers(0, 1000), min_size=1, max_size=3)
                | st.dictionaries(_numeric_text, st.integers(-5, 1 << 41) | _numeric_text,
                                  max_size=4))
_FIELDS = sorted({f for fs in OPS_FIELDS.values() for f in fs} | {"v", "id"})


_OP_FIELDS = [(op, f) for op, fs in OPS_FIELDS.items() for f in [*fs, *ENVELOPE_FIELDS]]


@pytest.mark.parametrize(("op", "field"), _OP_FIELDS, ids=[f"{o}.{f}" for o, f in _OP_FIELDS])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_field_value, others=st.dictionaries(st.sampled_from(_FIELDS), _field_value,
                                                  max_size=2))
def test_decoding_numbers_of_every_unicode_category_is_a_request_or_a_protocol_error(
        op: str, field: str, value: Any, others: dict[str, Any]) -> None:
    fields = {**others, field: value}
    line = json.dumps({"v": 1, "op": op, **fields}, ensure_ascii=False).encode()
    try:
        env = protocol.decode(line)
    except protocol.ProtocolError as e:
        assert e.code in (protocol.BAD_REQUEST, protocol.UNSUPPORTED_VERSION,
                          protocol.UNKNOWN_OP), e.code
        return
    req = env.req
    if isinstance(req, protocol.Step):
        raw = fields.get("hist")
        if isinstance(raw, dict):
            assert all(k.isascii() for k in raw), raw  # "\u0661" is not bucket 1
        assert all(type(b) is int and 0 <= b <= stats.MAX_BUCKET for b in req.hist)


# -- a registration names a process, not a thread -----------------------------------


@needs_2cpus
def test_registering_thread_ids_of_a_registered_process_leaves_no_thread_pinned() -> None:
    # /proc/TID/ answers for a thread id too, so a tid passed every check and
    # was registered as a "process" (all its group's threads). Placed elsewhere
    # than the leader's pin (here: background, on the completion CPU; on a larger
    # host: another home CPU), its journal held agentlatd's own pin (CPU 1) as
    # the threads' "original": once everything was unregistered, every thread
    # stayed on CPU 1 (seen before the fix: {pid: '1', tid: '1', ...})
    before = current_affinity()
    with workdir() as d, daemon(d, policy_text()) as dm, \
            Agent(dm.socket, "leader", nthreads=3) as ag:
        assert ag.ready and ag.ready["cpus"] == "1", ag.ready
        # every thread pinned by the leader's registration first (the agent tick
        # picks up threads started after it registered)
        wait_until(lambda: all_on(ag.pid, "1") and len(thread_affinities(ag.pid)) >= 4,
                   what="all threads of the agent pinned to CPU 1")
        tids = sorted(t for t in thread_affinities(ag.pid) if t != ag.pid)
        answers = [dm.request("register", agent_id=f"thread-{t}", pid=t,
                              latency_class="background") for t in tids]
        for t, ans in zip(tids, answers, strict=True):
            assert is_error(ans, "bad_request"), ans
            assert f"thread {t}" in ans["error"]["message"]
            assert f"process {ag.pid}" in ans["error"]["message"]
        assert [r["pid"] for r in dm.agents()] == [ag.pid]
        assert all_on(ag.pid, "1")
        for t in [ag.pid, *tids]:
            dm.request("unregister", pid=t)
        assert dm.agents() == []
        aff = thread_affinities(ag.pid)
        assert aff and all(v == before for v in aff.values()), (before, aff)


def test_tgid_of_tells_a_thread_from_its_process() -> None:
    got: list[int] = []
    ev = threading.Event()

    def run() -> None:
        got.append(threading.get_native_id())
        ev.wait(5)

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_until(lambda: got, what="thread started")
        root = Root("/")
        assert tasks.tgid_of(root, os.getpid()) == os.getpid()
        assert tasks.tgid_of(root, got[0]) == os.getpid() != got[0]
        assert tasks.tgid_of(root, tasks.PID_MAX + 1) is None
    finally:
        ev.set()
        t.join()
