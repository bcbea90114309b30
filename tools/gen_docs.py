#!/usr/bin/env python3
"""Generate the man pages and shell completions from the argparse parser.

    python3 tools/gen_docs.py OUTDIR

writes OUTDIR/man/agentlatd.8, OUTDIR/man/agentlatd-<command>.8 (one per command),
OUTDIR/man/agentlatd.toml.5 (from etc/agentlatd.toml, which documents every key) and
OUTDIR/completion/bash/agentlatd, OUTDIR/completion/zsh/_agentlatd.

argparse-manpage writes each page's SYNOPSIS/OPTIONS and shtab the completions, both from
`agentlatd.cli.build_parser()`, so neither can drift from `--help`; this script adds the
sections argparse has no notion of (EXIT STATUS from agentlatd/exitcodes.py, ENVIRONMENT,
FILES, SEE ALSO). Runs at package build time (debian/rules) with Debian's
python3-argparse-manpage (1.2) and python3-shtab, and in the tests with PyPI's (4.x).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import shtab  # noqa: E402
from build_manpages.manpage import Manpage  # noqa: E402

from agentlatd import __version__  # noqa: E402
from agentlatd.cli import COMMANDS, build_parser  # noqa: E402
from agentlatd.exitcodes import EXIT_STATUS  # noqa: E402

ENVIRONMENT = (
    ("AGENTLATD_CONFIG", "the policy file used when --config is not given (default "
                         "/etc/agentlatd.toml; without that file, the embedded default policy)"),
    ("AGENTLATD_SOCKET", "the daemon's socket for `agents`, `exec`, `status` and agentlatd.client "
                         "(default /run/agentlatd/agentlatd.sock)"),
    ("NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID", "set by systemd for `run` "
                                                  "(Type=notify, watchdog)"),
    ("JOURNAL_STREAM", "set by systemd: `run` then logs without timestamps, with priorities"),
)
FILES = (
    ("/etc/agentlatd.toml", "the policy, agentlatd.toml(5); every key is documented in it"),
    ("/run/agentlatd/journal.json", "the rollback journal: the original value of every setting "
                                    "agentlatd changed (`rollback` restores it)"),
    ("/run/agentlatd/lock", "held by the one process that may change settings"),
    ("/run/agentlatd/agentlatd.sock", "the agent registration socket (group agentlatd, mode 0660)"),
)


def esc(text: str) -> str:
    """roff-escape plain text: backslashes, leading dots/quotes, hyphens in options."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def th(name: str, section: int, title: str) -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    return f'.TH {name.upper()} {section} "{date}" "agentlatd {__version__}" "{title}"\n'


def common_sections(see_also: list[str]) -> str:
    out = [".SH EXIT STATUS"]
    for code, what in EXIT_STATUS:
        out += [".TP", f".B {int(code)}", esc(what)]
    out.append(".SH ENVIRONMENT")
    for name, what in ENVIRONMENT:
        out += [".TP", f".B {esc(name)}", esc(what)]
    out.append(".SH FILES")
    for path, what in FILES:
        out += [".TP", f".I {esc(path)}", esc(what)]
    out += [".SH SEE ALSO", ",\n".join(f".BR {p} ({s})" for p, s in see_also)]
    return "\n".join(out) + "\n"


def generated_body(parser: argparse.ArgumentParser) -> str:
    """argparse-manpage's page less its .TH/NAME header and its epilog section."""
    text = str(Manpage(parser))
    text = re.sub(r"\A\.TH[^\n]*\n\.SH NAME\n[^\n]*\n", "", text)
    text = re.split(r"^\.SH (?:COMMENTS|EPILOG)\s*$", text, flags=re.M)[0]
    return text.rstrip("\n") + "\n"


def examples(lines: tuple[str, ...]) -> str:
    if not lines:
        return ""
    return ".SH EXAMPLES\n.nf\n" + "\n".join(esc(x) for x in lines) + "\n.fi\n"


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def command_page(name: str, sp: argparse.ArgumentParser, helptext: str,
                 exs: tuple[str, ...]) -> str:
    return (th(f"agentlatd-{name}", 8, "System Administration")
            + f".SH NAME\nagentlatd\\-{name} \\- {esc(helptext)}\n"
            + generated_body(sp) + examples(exs)
            + common_sections([("agentlatd", 8), ("agentlatd.toml", 5)]))


def main_page(parser: argparse.ArgumentParser, mods: dict[str, tuple[str, tuple[str, ...]]]) -> str:
    parser.epilog = None
    body = generated_body(parser)
    cmds = [".SH COMMANDS"]
    for name, (helptext, _) in mods.items():
        cmds += [".TP", f".B {name}", f"{esc(helptext)}; see", f".BR agentlatd\\-{name} (8)."]
    extra = """.SH SIGNALS
.TP
.B SIGHUP
\\fBrun\\fR: reload the policy; a policy with errors is reported and the old one stays.
.TP
.B SIGTERM
\\fBrun\\fR: roll back every change and exit 0.
"""
    see = [(f"agentlatd\\-{n}", 8) for n in mods] + [("agentlatd.toml", 5), ("irqbalance", 1),
                                                     ("systemctl", 1)]
    return (th("agentlatd", 8, "System Administration")
            + ".SH NAME\nagentlatd \\- keep AI agent control loops on IRQ\\-quiet CPUs\n"
            + body + "\n".join(cmds) + "\n" + extra + common_sections(see))


def toml_page() -> str:
    """agentlatd.toml(5): the shipped, commented policy is the reference."""
    text = (REPO / "etc" / "agentlatd.toml").read_text()
    head, _, rest = text.partition("\n[")
    intro = "\n".join(ln.lstrip("# ").rstrip() if ln.startswith("#") else ln
                      for ln in head.splitlines()[1:]).strip()
    out = [th("agentlatd.toml", 5, "File Formats"),
           ".SH NAME\nagentlatd.toml \\- agentlatd policy file\n",
           ".SH SYNOPSIS\n/etc/agentlatd.toml\n",
           ".SH DESCRIPTION\n", esc(intro), "\n.PP\n",
           "The file is TOML. Below is the complete default policy: every section and key "
           "with its default value, its effect, the kernel default and the trade\\-off.\n",
           ".SH DEFAULT POLICY\n.nf\n", esc("[" + rest.rstrip("\n")), "\n.fi\n",
           common_sections([("agentlatd", 8), ("agentlatd\\-plan", 8), ("agentlatd\\-run", 8)])]
    return "".join(out)


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    parser = build_parser()
    subs = subparsers(parser)
    import importlib
    mods = {n: (importlib.import_module(m).HELP, tuple(getattr(importlib.import_module(m),
                                                                "EXAMPLES", ())))
            for n, m in COMMANDS.items() if n in subs}
    man = out / "man"
    comp = out / "completion"
    for d in (man, comp / "bash", comp / "zsh"):
        d.mkdir(parents=True, exist_ok=True)
    written = []
    pages = {man / "agentlatd.8": main_page(build_parser(), mods),
             man / "agentlatd.toml.5": toml_page()}
    for name, (helptext, exs) in mods.items():
        pages[man / f"agentlatd-{name}.8"] = command_page(name, subs[name], helptext, exs)
    pages[comp / "bash" / "agentlatd"] = shtab.complete(parser, shell="bash")
    pages[comp / "zsh" / "_agentlatd"] = shtab.complete(parser, shell="zsh")
    for path, text in pages.items():
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tools/gen_docs.py OUTDIR")
    for p in generate(pathlib.Path(sys.argv[1])):
        print(p)
