"""`agentlatd plan --root <fixture> --json` against reviewed golden files.

Each tests/fixtures/machines/<id>/ (with proc/) has tests/plan/golden/<id>.json.
The golden file is a reviewed artifact: when the planner or a fixture changes
on purpose, regenerate with

    AGENTLATD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/plan/test_golden.py

then READ the diff (git diff tests/plan/golden) before committing it.
"""

from __future__ import annotations

import difflib
import os
import pathlib

import pytest

from agentlatd import cli

HERE = pathlib.Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
FIXTURES = HERE.parent / "fixtures" / "machines"
UPDATE = os.environ.get("AGENTLATD_UPDATE_GOLDEN") == "1"


def _fixtures() -> list[pathlib.Path]:
    if not FIXTURES.is_dir():
        return []
    return sorted(p for p in FIXTURES.iterdir() if (p / "proc").is_dir())


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc = cli.main(["plan", *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def _tree_state(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.mark.parametrize("fixture", _fixtures(), ids=lambda p: p.name)
def test_plan_json_matches_golden(fixture: pathlib.Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree_state(fixture)
    got = _run(capsys, "--root", str(fixture), "--json")
    assert _tree_state(fixture) == before, "agentlatd plan wrote into the tree"
    golden = GOLDEN / f"{fixture.name}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(got)
        return
    assert golden.exists(), (f"no golden file {golden.relative_to(HERE.parent.parent)}; "
                             "generate it with AGENTLATD_UPDATE_GOLDEN=1 and review it")
    want = golden.read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            "golden", "plan", n=2))
        pytest.fail(f"plan of {fixture.name} differs from {golden.name} "
                    f"(AGENTLATD_UPDATE_GOLDEN=1 to regenerate, then review):\n{diff[:6000]}")


@pytest.mark.parametrize("fixture", _fixtures(), ids=lambda p: p.name)
def test_plan_text_fits_80_columns(fixture: pathlib.Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    text = _run(capsys, "--root", str(fixture))
    assert "Completion CPUs:" in text and "CPU roles:" in text
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long


def test_every_golden_file_has_its_fixture() -> None:
    if UPDATE or not GOLDEN.is_dir():
        return
    names = {p.name for p in _fixtures()}
    stale = [g.name for g in GOLDEN.glob("*.json") if g.stem not in names]
    assert not stale, f"golden files without a fixture: {stale}"
