"""Policy loading: the embedded default, overrides, and errors that name file, line and key."""

from __future__ import annotations

import contextlib
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd import policy
from agentlatd.errors import PolicyError

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_embedded_default_is_the_shipped_file() -> None:
    assert (REPO / "etc/agentlatd.toml").read_text() == (REPO / "agentlatd/default.toml").read_text()
    p = policy.default()
    assert p.cpus.completion == "auto"
    assert p.classes["interactive"].pin and p.classes["background"].to_completion
    # never batching off, never coalescing off (design note section 11)
    assert p.tuning.coalesce_min_usecs > 0


def test_override_merges_over_defaults() -> None:
    p = policy.loads('[cpus]\ncompletion = "0-1"\n[classes.normal]\nnice = 5\n', "t.toml")
    assert p.cpus.completion == "0-1" and p.cpus.home == "auto"
    assert p.classes["normal"].nice == 5 and p.classes["normal"].budget_us == 2000
    assert p.classes["interactive"].pin


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("[daemon]\ninterval = 0\n", "daemon.interval", 2, "0.05..3600 s"),
        ("[daemon]\nintervall = 1\n", "daemon.intervall", 2, "unknown key"),
        ("[nope]\n", "nope", 1, "unknown section"),
        ("\n[tuning]\nrps = 'yes'\n", "tuning.rps", 3, "true or false"),
        ("[tuning]\nnetdev_budget_usecs = 10\n", "tuning.netdev_budget_usecs", 2, "never batching off"),
        ("[cpus]\ncompletion = '0-3'\nhome = '3-5'\n", "cpus.home", 3, "also completion"),
        ("[classes.interactive]\nexclusive = 'yes'\n", "classes.interactive.exclusive", 2, "one of"),
        ("[devices]\ninclude = 'eth0'\n", "devices.include", 2, "array of strings"),
        ("[daemon\n", "", 1, "not valid TOML"),
    ],
)
def test_errors_name_file_line_key(text: str, key: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as ei:
        policy.loads(text, "/etc/agentlatd.toml")
    e = ei.value
    assert e.file == "/etc/agentlatd.toml"
    assert e.key == key
    assert e.line == line
    assert words in str(e)


def test_load_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        policy.load(str(tmp_path / "none.toml"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_loader_never_crashes(text: str) -> None:
    # any text either loads or raises PolicyError: never another exception
    with contextlib.suppress(PolicyError):
        policy.loads(text, "fuzz.toml")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["daemon", "cpus", "devices", "heat", "tuning", "metrics", "classes", "x"]),
    st.dictionaries(st.text(min_size=1, max_size=12),
                    st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                              st.booleans(), st.lists(st.text(max_size=5), max_size=3)),
                    max_size=4),
    max_size=4))
def test_loader_structured_fuzz(doc: dict[str, dict[str, object]]) -> None:
    import json
    lines = []
    for sec, kv in doc.items():
        lines.append(f"[{sec}]")
        for k, v in kv.items():
            lines.append(f"{json.dumps(k)} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    with contextlib.suppress(PolicyError):
        policy.loads("\n".join(lines), "fuzz.toml")


def test_rq_affinity_leave() -> None:
    # the default writes 2; "leave" is the only way to say "never write it"
    assert policy.default().tuning.rq_affinity == 2
    p = policy.loads('[tuning]\nrq_affinity = "leave"\n', "t.toml")
    assert p.tuning.rq_affinity is None
    with pytest.raises(PolicyError, match=r"tuning\.rq_affinity"):
        policy.loads('[tuning]\nrq_affinity = "keep"\n', "t.toml")
