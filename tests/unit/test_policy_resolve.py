"""policy.resolve(): --config, else the installed /etc/agentlatd.toml, else the
embedded default; the commands say which one is in force. The installed path
is redirected with AGENTLATD_CONFIG (the real /etc is never touched)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from agentlatd import policy
from agentlatd.errors import PolicyError

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "machines"


def _installed(tmp_path: pathlib.Path, text: str | None = None) -> pathlib.Path:
    p = tmp_path / "agentlatd.toml"
    p.write_text(text if text is not None else policy.default_text())
    p.chmod(0o644)
    return p


def test_default_path_is_etc_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(policy.CONFIG_ENV, raising=False)
    assert policy.default_path() == policy.DEFAULT_PATH == "/etc/agentlatd.toml"
    monkeypatch.setenv(policy.CONFIG_ENV, "/x/y.toml")
    assert policy.default_path() == "/x/y.toml"


def test_no_installed_file_means_the_embedded_default(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(policy.CONFIG_ENV, str(tmp_path / "missing.toml"))
    assert policy.resolve_path(None) is None
    assert policy.resolve(None).source == "<embedded default>"


def test_the_installed_file_wins_over_the_embedded_default(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _installed(tmp_path, policy.default_text().replace("interval = 1.0", "interval = 7.0"))
    monkeypatch.setenv(policy.CONFIG_ENV, str(p))
    pol = policy.resolve(None)
    assert pol.source == str(p) and pol.daemon.interval == 7.0
    assert policy.resolve_path(None) == str(p)


def test_config_wins_over_the_installed_file(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(policy.CONFIG_ENV, str(_installed(tmp_path, "not toml [")))
    other = tmp_path / "other.toml"
    other.write_text(policy.default_text())
    other.chmod(0o644)
    assert policy.resolve(str(other)).source == str(other)
    # a broken installed file is an error, not a silent fallback to the default
    with pytest.raises(PolicyError):
        policy.resolve(None)


def _cli(args: list[str], env_path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **{policy.CONFIG_ENV: str(env_path)})
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "agentlatd", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


def test_plan_and_apply_name_the_policy_in_force(tmp_path: pathlib.Path) -> None:
    machine = sorted(p for p in FIXTURE.iterdir() if (p / "proc" / "interrupts").exists())[0]
    p = _installed(tmp_path)
    r = _cli(["plan", "--root", str(machine)], p)
    assert r.returncode == 0, r.stderr
    assert f"Policy: {p}" in r.stdout
    r = _cli(["plan", "--root", str(machine)], tmp_path / "missing.toml")
    assert r.returncode == 0, r.stderr
    assert "Policy: <embedded default>" in r.stdout
    r = _cli(["apply", "--dry-run", "--root", str(machine), "--state-dir",
              str(tmp_path / "st"), "--json"], p)
    assert r.returncode in (0, 1), r.stderr
    assert json.loads(r.stdout)["policy"] == str(p)
