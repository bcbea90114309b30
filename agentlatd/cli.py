"""Command line: `agentlatd <command>`.

Subcommands are table entries (style.md habit 9): each lives in
agentlatd/commands/<name>.py and exposes HELP (one line), EXAMPLES (runnable
lines for --help), add_arguments(parser) and run(args) -> exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from agentlatd import __version__
from agentlatd.errors import AgentlatdError

# name -> module; order is the order of `agentlatd --help`
COMMANDS: dict[str, str] = {
    "status": "agentlatd.commands.status",
    "plan": "agentlatd.commands.plan",
    "apply": "agentlatd.commands.apply",
    "rollback": "agentlatd.commands.rollback",
    "run": "agentlatd.commands.run",
    "agents": "agentlatd.commands.agents",
    "exec": "agentlatd.commands.exec_",
    "capture": "agentlatd.commands.capture",
    "trace": "agentlatd.commands.trace",
    "bench": "agentlatd.commands.bench",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def command_of(argv: Sequence[str]) -> str | None:
    """The command argv names (its first word that is not an option), if it is one."""
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `only`: `agentlatd run` then imports the daemon's
    modules and no other command's (the tools under agentlatd/tools stay out of it)."""
    p = argparse.ArgumentParser(
        prog="agentlatd",
        description="Keep AI agent control loops on IRQ-quiet CPUs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  agentlatd status --interval 2\n  agentlatd plan --json\n"
               "  agentlatd plan --root tests/fixtures/machines/server-2s64t\n",
    )
    p.add_argument("--version", action="version", version=f"agentlatd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only else COMMANDS:
        mod = _load(name)
        examples = getattr(mod, "EXAMPLES", ())
        sp = sub.add_parser(
            name, help=mod.HELP, description=mod.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=("examples:\n" + "\n".join(f"  {e}" for e in examples)) if examples else None,
        )
        mod.add_arguments(sp)
        sp.set_defaults(_module=mod)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        rc: int = args._module.run(args)
        return rc
    except AgentlatdError as e:
        print(f"agentlatd {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
