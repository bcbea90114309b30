"""Exit statuses of every `agentlatd` command, one table.

The man pages' EXIT STATUS section and the README's table are made from EXIT_STATUS,
so a script reading `$?` and a person reading the manual see the same numbers.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1           # an error (one line on stderr) or a change/restore that failed
    USAGE = 2            # bad command line (argparse), or no command given
    TARGET_MISSED = 3    # bench --check: a measured target was not met
    NOT_FOUND = 127      # exec: the command to run was not found
    INTERRUPTED = 130    # SIGINT (Ctrl-C); everything changed was restored first


EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (Exit.OK, "success: the command did what it was asked (for `plan` and `apply --dry-run`: "
              "printed the plan, whatever it holds)"),
    (Exit.FAILED, "an error, printed as one line on stderr; for `apply` and `rollback`: at least "
                  "one knob could not be changed or restored (the others were); for `run`: the "
                  "daemon stopped on an error"),
    (Exit.USAGE, "bad command line or no command"),
    (Exit.TARGET_MISSED, "`bench --check`: the run finished but a target of the evaluation was "
                         "not met"),
    (Exit.NOT_FOUND, "`exec`: the command to run was not found"),
    (Exit.INTERRUPTED, "interrupted (SIGINT); settings changed by the command were restored"),
)
