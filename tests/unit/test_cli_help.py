"""What `--help` shows people."""

from __future__ import annotations

import contextlib
import io

import pytest

from agentlatd.cli import build_parser


def help_text(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


def test_run_help_shows_no_test_only_option() -> None:
    text = help_text("run")
    assert "--exclusive-scope-pid" not in text and "tests;" not in text
    # still accepted: the integration tests confine the daemon with it
    args = build_parser().parse_args(["run", "--exclusive-scope-pid", "42"])
    assert args.exclusive_scope_pid == 42
