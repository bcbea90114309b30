"""The README's two commands: written to work as root without sudo, and .ci/run runs command 2."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "readme"))
from readme_commands import README, commands  # noqa: E402


def test_readme_commands_need_no_sudo_binary_as_root() -> None:
    cmds = commands(README.read_text())
    assert set(cmds) == {1, 2}, cmds
    sudo_forms = ("$(command -v sudo)", '$([ "$(id -u)" = 0 ] || echo sudo)')
    for c in cmds.values():
        # `sudo` only where it expands to nothing for root or where sudo is missing
        bare = c
        for form in sudo_forms:
            bare = bare.replace(form, "")
        assert "sudo" not in bare, c
    # command 1 expanded as the shell does on a minimal image: no sudo on PATH
    first = cmds[1].split(" && ")[0]  # only expanded, never run
    p = subprocess.run(["bash", "-c", f"PATH=/nonexistent; set -- {first}; echo \"$*\""],
                       capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "apt-get update", p.stdout
    if os.geteuid() == 0:  # command 2 leaves root's environment alone even with sudo around
        p = subprocess.run(["bash", "-c", f"set -- {cmds[2]}; echo \"$*\""],
                           capture_output=True, text=True, check=True)
        assert p.stdout.strip() == "bash tests/run.sh"


def test_ci_runs_exactly_readme_command_2() -> None:
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    assert ci[-1] == f"exec {commands(README.read_text())[2]}", ci
