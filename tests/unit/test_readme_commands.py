"""The README's two commands: written to work as root without sudo, and .ci/run runs command 2."""

from __future__ import annotations

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "readme"))
from readme_commands import README, commands  # noqa: E402


def test_readme_commands_need_no_sudo_binary_as_root() -> None:
    cmds = commands(README.read_text())
    assert set(cmds) == {1, 2}, cmds
    for c in cmds.values():
        # `sudo` only as `$(command -v sudo)`, which is empty where sudo is missing
        assert "sudo" not in c.replace("$(command -v sudo)", ""), c
    # expanded as the shell does without sudo on PATH: a plain command
    p = subprocess.run(["bash", "-c", f"PATH=/nonexistent; set -- {cmds[2]}; echo \"$*\""],
                       capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "bash tests/run.sh"


def test_ci_runs_exactly_readme_command_2() -> None:
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    assert ci[-1] == f"exec {commands(README.read_text())[2]}", ci
