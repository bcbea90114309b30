"""Shared test helpers: fixture machines and real network namespaces."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "machines"


def fixture_machines() -> list[pathlib.Path]:
    """Every recorded/hand-written machine tree (each has proc/ and sys/)."""
    if not FIXTURES.is_dir():
        return []
    return sorted(p for p in FIXTURES.iterdir() if (p / "proc").is_dir())


@pytest.fixture
def is_root() -> bool:
    return os.geteuid() == 0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shard", metavar="K/N", default=None,
        help="run only tests K, K+N, K+2N, ... (0 <= K < N) of those collected and selected, in "
             "collection order: tests/run.sh spreads the pure tier over its two lanes with it "
             "(every N-th test, so one file's slow tests do not all land in one shard)")


def _shard(spec: str) -> tuple[int, int]:
    k, sep, n = spec.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise pytest.UsageError(f"--shard {spec!r}: K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


@pytest.hookimpl(trylast=True)  # after -m and -k deselected theirs: shards split what is left
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spec = config.getoption("shard")
    if spec is not None:
        k, n = _shard(spec)
        keep = items[k::n]
        kept = set(map(id, keep))
        config.hook.pytest_deselected(items=[it for it in items if id(it) not in kept])
        items[:] = keep
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


NOBODY = 65534


@pytest.fixture
def nobody_python() -> Iterator[list[str]]:
    """argv prefix that runs `python -m agentlatd` as uid 65534 from wherever the checkout is.

    A checkout under /root (mode 0700), or a venv there, is out of nobody's reach: the
    package and its one dependency (pyroute2) are then copied to a fresh directory under
    /tmp that any uid may read, and run by an interpreter nobody can execute with
    PYTHONPATH naming that copy. Skips, saying why, when no such interpreter exists.
    """
    import importlib.util
    import shutil
    import subprocess
    import sys
    import tempfile

    def runs(argv: list[str]) -> bool:
        p = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            *argv, "-c", "import agentlatd.cli"],
                           capture_output=True, timeout=60, check=False, cwd="/")
        return p.returncode == 0

    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid with setpriv")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    if runs([sys.executable]):
        yield [sys.executable]
        return
    lib = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-nobody-", dir="/tmp"))
    try:
        for name in ("agentlatd", "pyroute2"):
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.submodule_search_locations:
                continue
            src = pathlib.Path(next(iter(spec.submodule_search_locations)))
            shutil.copytree(src, lib / name, ignore=shutil.ignore_patterns("__pycache__"))
        for d, _dirs, files in os.walk(lib):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        for py in (os.path.realpath(sys.executable), "/usr/bin/python3"):
            argv = ["env", f"PYTHONPATH={lib}", py]
            if os.path.exists(py) and runs(argv):
                yield argv
                return
        pytest.skip(f"no Python interpreter that uid {NOBODY} can execute: {sys.executable} "
                    "lies under a directory it cannot traverse, and there is no /usr/bin/python3")
    finally:
        shutil.rmtree(lib, ignore_errors=True)
