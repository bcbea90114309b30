"""The >= 10 minute soak (bench/soak.py), as a test outside the default run.

    .venv/bin/python -m pytest -m slow tests/hostile/test_soak.py     (about 11 minutes)
    .venv/bin/python bench/soak.py --minutes 1                        (the short check)
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(1800)
def test_soak_ten_minutes_200_agents(tmp_path: pathlib.Path) -> None:
    minutes = os.environ.get("AGENTLATD_SOAK_MINUTES", "10")
    out = tmp_path / "soak.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--minutes", minutes,
                        "--json", str(out)], capture_output=True, text=True, timeout=1700,
                       check=False, cwd=str(REPO))
    res = json.loads(out.read_text())
    assert p.returncode == 0 and res["ok"], p.stdout[-4000:] + p.stderr[-2000:]
    assert all(c["ok"] for c in res["checks"].values()), res["checks"]
