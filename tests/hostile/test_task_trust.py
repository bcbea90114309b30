"""Per-thread trust and complete restores of task knobs (issue 12 holes 2, 4, 9).

Real daemons on temporary sockets (tests/integration/agentshelpers.py: a policy
that steers nothing on the host), real processes, real uids.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from agentshelpers import (
    current_affinity,
    policy_text,
    start_daemon,
    thread_affinities,
    wait_until,
    workdir,
)
from hostilehelpers import fill, tmpfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tmpfs, other uids)")
needs_2cpus = pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0),
                                 reason="needs CPUs 0 and 1")


def _journal_targets(path: str) -> list[str]:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"target"' in line:
            out.append(str(json.loads(line.rstrip(","))["target"]))
    return out


@needs_2cpus
def test_refused_registration_for_a_full_disk_leaves_no_phantom_original() -> None:
    """A registration refused because the journal could not be saved (ENOSPC)
    left its originals in the engine's in-memory journal; the next successful
    save wrote them out, and the stop "restored" a value agentlatd never
    changed over the process's own later choice."""
    with workdir() as d, tmpfs("256k", nr_inodes=64) as m:
        os.symlink(m, d / "state")
        dm = start_daemon(d, policy_text())
        victim = subprocess.Popen(["sleep", "60"])
        other = subprocess.Popen(["sleep", "60"])
        try:
            fill(m)
            ans = dm.request("register", agent_id="refused", pid=victim.pid)
            assert ans["ok"] is False and ans["error"]["code"] == "unavailable", ans
            for f in m.iterdir():
                if f.name.startswith("filler"):
                    f.unlink()
            # the process makes its own choice after the refusal
            os.sched_setaffinity(victim.pid, {0})
            # another registration saves the journal
            assert dm.request("register", agent_id="other", pid=other.pid)["ok"]
            targets = _journal_targets(str(m / "journal.json"))
            assert targets and all(t.startswith(f"{other.pid}:") for t in targets), targets
            assert dm.stop() == 0, dm.log[-2000:]
            assert set(thread_affinities(victim.pid).values()) == {"0"}, dm.log[-2000:]
            assert set(thread_affinities(other.pid).values()) == {current_affinity()}
        finally:
            for p in (victim, other):
                p.kill()
                p.wait()
            if dm.proc.poll() is None:
                dm.proc.kill()
                dm.proc.wait()
