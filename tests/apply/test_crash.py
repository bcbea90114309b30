"""kill -9 at every write point, then start again: every knob is back to its original.

tests/support/launch.py --crash-after-writes N gives the engine a write hook
(Engine(write_hook=...)) that makes `agentlatd apply` SIGKILL itself right after
its Nth successful kernel write (N=0: right after the journal is saved, before
the first write). For N = 0, 1, ..., last
the run is killed there; the next start is `agentlatd rollback`, or a new
`agentlatd apply` (which restores the interrupted run first) followed by a
rollback. Both end with every value exactly as before.

Each of those runs is a fresh fork of one process that imported agentlatd and ran
nothing (applyhelpers.ForkedCli, tests/support/forkcli.py: the ~0.35 s of imports a
new interpreter spends before its first write, paid once per test, not once per run).
"""

from __future__ import annotations

import json
import pathlib
import signal
from collections.abc import Callable

import pytest
from applyhelpers import (
    ForkedCli,
    copy_fixture,
    diff_keys,
    napi_set_fields,
    netns_with_veths,
    plan_file,
    snapshot,
    snapshot_diff,
    tree_bytes,
    veth_changes,
)

from agentlatd.apply import journal_read
from agentlatd.plan.changes import Change


def _crash_cycle(n: int, apply_args: list[str], restart_args: list[str], *,
                 cli: ForkedCli, state: pathlib.Path,
                 changed_now: Callable[[], int], writes: int) -> None:
    p = cli(apply_args, crash_after_writes=n)
    assert p.returncode == -signal.SIGKILL, (n, p.returncode, p.stdout, p.stderr)
    j = journal_read.read_json(str(state / "journal.json"))
    assert j is not None
    assert j["complete"] is False
    # exactly n writes reached the kernel before the kill (each changes one value)
    assert changed_now() == n, n
    # every value that changed has its original journaled
    assert len(j["entries"]) == writes
    if n % 2 == 0:
        p = cli(["rollback", *restart_args])
        assert p.returncode == 0, (n, p.stdout, p.stderr)
        assert f"{n} restored" in p.stdout or n == 0, p.stdout
    else:
        # a new apply restores the interrupted run before anything else
        p = cli([*apply_args, "--json"])
        assert p.returncode == 0, (n, p.stdout, p.stderr)
        rep = json.loads(p.stdout)
        assert rep["recovery"]["action"] == "restored", rep["recovery"]
        assert changed_now() == writes
        p = cli(["rollback", *restart_args])
        assert p.returncode == 0, (n, p.stdout, p.stderr)
    assert not (state / "journal.json").exists()
    assert changed_now() == 0


def test_kill_9_at_every_write_point_on_a_fixture_tree(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("server-2s64t", tmp_path)
    before = tree_bytes(tree)
    changes = [Change.parse("net.rps_cpus", f"ens1f0/rx-{i}", "", "0000000f", "t") for i in range(3)]
    changes += [Change.parse("net.rps_flow_cnt", "ens1f0/rx-0", "", "4096", "t"),
                Change.parse("net.xps_cpus", "ens1f0/tx-1", "", "4", "t"),
                Change.parse("irq.affinity", "80", "", "36", "t"),
                Change.parse("net.threaded", "ens1f0", "", "1", "t"),
                Change.parse("block.rq_affinity", "nvme0n1", "", "2", "t"),
                Change.parse("sysctl", "net.core.rps_sock_flow_entries", "", "32768", "t")]
    plan = plan_file(tmp_path / "plan.json", changes)
    state = tmp_path / "state"
    args = ["--root", str(tree), "--state-dir", str(state)]

    def changed_now() -> int:
        # effective_affinity_list of a recorded tree never follows: one file per write
        return len(diff_keys(before, tree_bytes(tree)))

    with ForkedCli() as cli:
        for n in range(len(changes) + 1):
            _crash_cycle(n, ["apply", "--plan", str(plan), *args], args, cli=cli, state=state,
                         changed_now=changed_now, writes=len(changes))
            assert diff_keys(before, tree_bytes(tree)) == []
        # past the last write point the run completes
        p = cli(["apply", "--plan", str(plan), *args], crash_after_writes=len(changes) + 1)
        assert p.returncode == 0, p.stderr
        assert cli(["rollback", *args]).returncode == 0
    assert diff_keys(before, tree_bytes(tree)) == []


def test_kill_9_during_rollback_then_rollback_again(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("server-2s64t", tmp_path)
    before = tree_bytes(tree)
    changes = [Change.parse("net.rps_cpus", f"ens1f0/rx-{i}", "", "0000000f", "t") for i in range(4)]
    plan = plan_file(tmp_path / "plan.json", changes)
    args = ["--root", str(tree), "--state-dir", str(tmp_path / "state")]
    with ForkedCli() as cli:
        for n in range(1, len(changes)):
            assert cli(["apply", "--plan", str(plan), *args]).returncode == 0
            p = cli(["rollback", *args], crash_after_writes=n)
            assert p.returncode == -signal.SIGKILL
            assert len(diff_keys(before, tree_bytes(tree))) == len(changes) - n
            p = cli(["rollback", *args])
            assert p.returncode == 0, p.stdout + p.stderr
            assert diff_keys(before, tree_bytes(tree)) == []


@pytest.mark.netns
def test_kill_9_at_every_write_point_on_the_real_kernel(tmp_path: pathlib.Path) -> None:
    napi = napi_set_fields()
    with netns_with_veths() as v, ForkedCli(v.netns) as cli:
        a, b = v.devs
        # coalescing is unsupported on veth: no write, no write point
        changes = [c for c in veth_changes(a, b, napi) if c.knob != "net.coalesce"]
        plan = plan_file(tmp_path / "plan.json", changes)
        state = tmp_path / "state"
        args = ["--state-dir", str(state)]
        before = snapshot(v.netns, v.devs)
        napi_before = napi_values_or_empty(v.netns, b, napi)

        def changed_now() -> int:
            n = len(snapshot_diff(before, snapshot(v.netns, v.devs)))
            if napi and napi_values_or_empty(v.netns, b, napi) != napi_before:
                n += 1  # per-NAPI config shows in napi-get, not in sysfs
            return n

        for n in range(len(changes) + 1):
            _crash_cycle(n, ["apply", "--plan", str(plan), *args], args, cli=cli,
                         state=state, changed_now=changed_now, writes=len(changes))
            assert snapshot_diff(before, snapshot(v.netns, v.devs)) == []
            assert napi_values_or_empty(v.netns, b, napi) == napi_before


def napi_values_or_empty(netns: str, dev: str, napi: frozenset[str]) -> list[dict[str, object]]:
    from applyhelpers import napi_values
    return napi_values(netns, dev) if napi else []
