"""tasks.status_ids: Tgid, real and effective uid from proc/PID/status (one read).

Real lines as the kernel prints them (fs/proc/array.c task_state(): "Tgid:\\t%d",
"Uid:\\t%d\\t%d\\t%d\\t%d"); a status cut short or mangled is "gone" (None), never
a wrong identity.
"""

from __future__ import annotations

import pathlib

import pytest

from agentlatd.sample import tasks
from agentlatd.sysfs.root import Root

REAL = ("Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n"
        "Pid:\t4243\nPPid:\t1\nTracerPid:\t0\nUid:\t1000\t1001\t1002\t1003\n"
        "Gid:\t100\t100\t100\t100\nFDSize:\t64\n")


def _root(tmp_path: pathlib.Path, text: str) -> Root:
    d = tmp_path / "proc" / "4243"
    d.mkdir(parents=True)
    (d / "status").write_text(text)
    return Root(str(tmp_path))


def test_a_threads_status_names_its_process_and_both_uids(tmp_path: pathlib.Path) -> None:
    assert tasks.status_ids(_root(tmp_path, REAL), 4243) == (4242, 1000, 1001)


def test_the_live_kernels_status_agrees_with_a_line_by_line_parse() -> None:
    text = pathlib.Path("/proc/self/status").read_text()
    fields = {ln.split(":", 1)[0]: ln.split(":", 1)[1].split() for ln in text.splitlines()}
    ids = tasks.status_ids(Root("/"), int(pathlib.Path("/proc/self").resolve().name))
    assert ids == (int(fields["Tgid"][0]), int(fields["Uid"][0]), int(fields["Uid"][1]))


@pytest.mark.parametrize("text", [
    "", "Name:\tx\n", REAL.replace("Tgid:", "Tgod:"), REAL.replace("Uid:", "Uids:"),
    REAL.replace("Uid:\t1000\t1001\t1002\t1003", "Uid:\t1000"), REAL.replace("\t4242", "\tfour"),
    REAL.split("Uid:")[0],
])
def test_a_status_without_both_lines_is_gone(tmp_path: pathlib.Path, text: str) -> None:
    assert tasks.status_ids(_root(tmp_path, text), 4243) is None
