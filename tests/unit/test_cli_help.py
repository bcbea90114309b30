"""What `--help` shows people."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
import subprocess
import sys

import pytest

from agentlatd.cli import COMMANDS, build_parser
from agentlatd.exitcodes import EXIT_STATUS


def help_text(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


def test_run_has_no_test_only_option() -> None:
    # tests and the benchmark confine the daemon's exclusive-CPU moves by injection
    # (tests/support/launch.py, agentlatd/tools/bench/scoped.py), never by a switch
    assert "--exclusive-scope-pid" not in help_text("run")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--exclusive-scope-pid", "42"])
    assert "unrecognized arguments: --exclusive-scope-pid" in err.getvalue()


def test_every_command_has_a_man_page_and_bash_and_zsh_completion(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("build_manpages")
    pytest.importorskip("shtab")
    repo = pathlib.Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(repo / "tools" / "gen_docs.py"), str(tmp_path)],
                   check=True, capture_output=True)
    man = tmp_path / "man"
    bash = (tmp_path / "completion" / "bash" / "agentlatd").read_text()
    zsh = (tmp_path / "completion" / "zsh" / "_agentlatd").read_text()
    main = (man / "agentlatd.8").read_text()
    for name in COMMANDS:
        page = (man / f"agentlatd-{name}.8").read_text()
        for section in ("SYNOPSIS", "OPTIONS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"):
            assert f".SH {section}" in page, (name, section)
        assert f"agentlatd\\-{name} (8)" in main, name
        assert re.search(rf"\b{re.escape(name)}\b", bash) and re.search(rf"\b{re.escape(name)}\b", zsh)
    # every option of every command is completed
    for opt in ("--state-dir", "--dry-run", "--print", "--interval", "--check"):
        assert opt in bash and opt in zsh, opt
    toml = (man / "agentlatd.toml.5").read_text()
    for section in ("[daemon]", "[cpus]", "EXIT STATUS", "ENVIRONMENT", "FILES"):
        assert section in toml, section
    for code, _ in EXIT_STATUS:
        assert f".B {int(code)}\n" in main
