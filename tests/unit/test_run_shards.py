"""`pytest --shard K/N` (tests/conftest.py), with which tests/run.sh spreads the pure tier
over its two lanes: the N shards together are exactly the run without --shard, each test
in one shard only, and a bad K/N is a usage error, never a silently empty shard."""

from __future__ import annotations

import itertools
import os
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parents[1]


def _collect(d: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "conftest",
                           "-p", "no:cacheprovider", *args, str(d)],
                          capture_output=True, text=True, timeout=120, cwd=d, env=env, check=False)


def _ids(p: subprocess.CompletedProcess[str]) -> list[str]:
    assert p.returncode == 0, p.stdout + p.stderr
    return [line for line in p.stdout.splitlines() if "::" in line]


def test_shards_partition_the_selected_tests(tmp_path: pathlib.Path) -> None:
    (tmp_path / "test_a.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(5))\ndef test_p(i): pass\n"
        "def test_x(): pass\n")
    (tmp_path / "test_b.py").write_text("def test_y(): pass\ndef test_z(): pass\n")
    whole = _ids(_collect(tmp_path))
    assert len(whole) == 8
    shards = [_ids(_collect(tmp_path, "--shard", f"{k}/3")) for k in range(3)]
    assert sorted(itertools.chain(*shards)) == sorted(whole)  # every test once
    assert [len(s) for s in shards] == [3, 3, 2]
    # the shards split what -k left, not the whole collection
    narrowed = [_ids(_collect(tmp_path, "-k", "test_p", "--shard", f"{k}/2")) for k in range(2)]
    assert sorted(itertools.chain(*narrowed)) == sorted(i for i in whole if "test_p[" in i)


def test_bad_shard_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "test_a.py").write_text("def test_x(): pass\n")
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        p = _collect(tmp_path, "--shard", bad)
        assert p.returncode == 4, (bad, p.returncode, p.stdout, p.stderr)
        assert "--shard" in p.stderr, (bad, p.stderr)
