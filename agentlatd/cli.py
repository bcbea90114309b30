"""Command line: `agentlatd <command>`.

Subcommands are table entries (style.md habit 9): each lives in
agentlatd/commands/<name>.py and exposes HELP (one line), EXAMPLES (runnable
lines for --help), add_arguments(parser) and run(args) -> exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
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


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as e:
        if e.name == COMMANDS[name]:
            return None  # not built yet in this version
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentlatd",
        description="Keep AI agent control loops on IRQ-quiet CPUs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  agentlatd status --interval 2\n  agentlatd plan --json\n"
               "  agentlatd plan --root tests/fixtures/machines/server-2s64t\n",
    )
    p.add_argument("--version", action="version", version=f"agentlatd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _load(name)
        if mod is None:
            continue
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
    parser = build_parser()
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
