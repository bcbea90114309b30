"""Print README command N ("1. Set up ..." / "2. Run the whole test suite ...").

The command is the first indented code line under the numbered item of the section
"## Two commands on a fresh Debian 12 machine"; tests/readme/check_command1.sh runs
command 1 from here, and tests/unit/test_readme_commands.py checks that .ci/run runs
command 2, so neither can drift from what the README tells a person to type.
"""

from __future__ import annotations

import pathlib
import re
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def commands(text: str) -> dict[int, str]:
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    out: dict[int, str] = {}
    item = 0
    for line in section.splitlines():
        m = re.match(r"^(\d+)\. ", line)
        if m:
            item = int(m.group(1))
        elif item and item not in out and line.startswith("       ") and line.strip():
            out[item] = line.strip()
    return out


if __name__ == "__main__":
    cmds = commands(README.read_text())
    n = int(sys.argv[1])
    if n not in cmds:
        sys.exit(1)
    print(cmds[n])
