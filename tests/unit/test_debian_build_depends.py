"""The .deb build (debian/rules) runs tools/gen_docs.py, which builds the CLI parser and so
imports every command module: each third-party module that pulls in must be a Build-Depends,
or dpkg-buildpackage stops with ModuleNotFoundError on a host that lacks it."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
# import name -> Debian binary package, where the two differ
DEBIAN_NAME = {"build_manpages": "python3-argparse-manpage"}
# not packages: the venv's editable-install finder and setuptools' import shim
NOT_PACKAGES = re.compile(r"^(__editable__.*|_distutils_hack|__main__|__mp_main__)$")


def build_depends() -> set[str]:
    control = (REPO / "debian" / "control").read_text()
    field = re.search(r"^Build-Depends:(.*?)^\S", control, re.S | re.M)
    assert field, "debian/control has no Build-Depends"
    return {re.split(r"[\s(\[<]", d.strip())[0] for d in field.group(1).split(",") if d.strip()}


def test_build_depends_cover_the_modules_gen_docs_imports() -> None:
    code = ("import sys; from agentlatd.cli import build_parser; build_parser(); "
            "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
    third_party = {m for m in out if m not in sys.stdlib_module_names and m != "agentlatd"
                   and not NOT_PACKAGES.match(m)}
    needed = {DEBIAN_NAME.get(m, "python3-" + m.lower().replace("_", "-")) for m in third_party}
    assert needed <= build_depends(), f"missing from Build-Depends: {sorted(needed - build_depends())}"
