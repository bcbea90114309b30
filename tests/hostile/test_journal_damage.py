"""The rollback journal damaged, and the state directory full or read-only.

What must hold: a damaged journal is named with what is wrong, kept aside
byte for byte (never deleted), every entry that still parses is restored,
nothing else is written; and apply refuses to change anything it cannot
journal first (a full or read-only state directory: tiny tmpfs mounts this
test makes and unmounts).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from applyhelpers import cli, diff_keys, plan_file, small_tree, tree_bytes
from hostilehelpers import fill, remount, tmpfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlatd.apply import journal_read
from agentlatd.apply.engine import RESTORED, Engine
from agentlatd.errors import AgentlatdError, JournalError
from agentlatd.plan.changes import Change
from agentlatd.sysfs.root import Root

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")

CHANGES = [
    Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t"),
    Change.parse("net.rps_cpus", "eth9/rx-1", "", "c", "t"),
    Change.parse("net.xps_cpus", "eth9/tx-0", "", "2", "t"),
    Change.parse("net.threaded", "eth9", "", "1", "t"),
    Change.parse("net.gro_flush_timeout", "eth9", "", "20000", "t"),
    Change.parse("block.rq_affinity", "nvme0n1", "", "2", "t"),
]
FILES = {
    ("net.rps_cpus", "eth9/rx-0"): "sys/class/net/eth9/queues/rx-0/rps_cpus",
    ("net.rps_cpus", "eth9/rx-1"): "sys/class/net/eth9/queues/rx-1/rps_cpus",
    ("net.xps_cpus", "eth9/tx-0"): "sys/class/net/eth9/queues/tx-0/xps_cpus",
    ("net.threaded", "eth9"): "sys/class/net/eth9/threaded",
    ("net.gro_flush_timeout", "eth9"): "sys/class/net/eth9/gro_flush_timeout",
    ("block.rq_affinity", "nvme0n1"): "sys/block/nvme0n1/queue/rq_affinity",
}


def _applied(base: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, dict[str, bytes | str],
                                          dict[str, bytes | str], bytes]:
    """A small tree with CHANGES applied: (tree, state dir, before, after, journal bytes)."""
    tree = small_tree(base / "tree")
    state = base / "state"
    before = tree_bytes(tree)
    with Engine(Root(str(tree)), str(state)) as eng:
        rep = eng.apply(CHANGES)
        assert not rep.failed
    return tree, state, before, tree_bytes(tree), (state / "journal.json").read_bytes()


def _entry_lines(data: bytes) -> list[tuple[int, int, tuple[str, str]]]:
    """(start, end, key) byte span of each entry object in the journal text."""
    out = []
    pos = 0
    for ln in data.decode().splitlines(keepends=True):
        if '"knob"' in ln:
            obj = json.loads(ln.strip().rstrip(","))
            end = pos + len(ln.encode()[:ln.encode().rindex(b"}") + 1])
            out.append((pos, end, (obj["knob"], obj["target"])))
        pos += len(ln.encode())
    return out


def _recover(tree: pathlib.Path, state: pathlib.Path) -> tuple[str, str]:
    with Engine(Root(str(tree)), str(state)) as eng:
        rep = eng.recover()
    return rep.action, rep.message


def test_truncated_journal_restores_every_whole_entry_and_nothing_else(
        tmp_path: pathlib.Path) -> None:
    tree, state, before, after, data = _applied(tmp_path / "base")
    spans = _entry_lines(data)
    cuts = sorted({0, 1, len(data) - 3, *range(3, len(data), 17),
                   *(e for _, e, _ in spans), *(e - 1 for _, e, _ in spans)})
    for cut in cuts:
        for rel in FILES.values():  # back to the applied state, in the same tree
            (tree / rel).write_bytes(after[rel])  # type: ignore[arg-type]
        for p in state.iterdir():
            p.unlink()
        (state / "journal.json").write_bytes(data[:cut])
        action, msg = _recover(tree, state)
        assert action == "restored", (cut, msg)
        assert "damaged" in msg and "journal.json" in msg and "kept as" in msg, msg
        intact = {k for _, end, k in spans if end <= cut}
        now = tree_bytes(tree)
        for key, rel in FILES.items():
            # whole entries come back; a lost one keeps agentlatd's value (no guess)
            want = before[rel] if key in intact else after[rel]
            assert now[rel] == want, (cut, key, now[rel], want)
        # the damaged file is kept aside byte for byte, never deleted
        kept = [p for p in state.iterdir() if p.name.startswith("journal.json.corrupt")]
        assert len(kept) == 1 and kept[0].read_bytes() == data[:cut]
        assert not (state / "journal.json").exists()  # every salvaged entry was restored


@pytest.mark.parametrize("how", ["nul-bytes", "binary-garbage", "not-utf8", "top-level-list",
                                 "entry-wrong-type", "duplicate-entry", "unknown-flag",
                                 "zero-length", "header-garbage"])
def test_corrupted_journal_is_named_kept_and_salvaged(tmp_path: pathlib.Path, how: str) -> None:
    tree, state, before, after, data = _applied(tmp_path)
    text = data.decode()
    lines = text.splitlines(keepends=True)
    bad: bytes
    if how == "nul-bytes":
        bad = data[:40] + b"\0" * 64 + data[104:]
    elif how == "binary-garbage":
        bad = b"".join(ln.encode() for ln in lines[:2]) + os.urandom(300) + b"\n" + \
            b"".join(ln.encode() for ln in lines[3:])
    elif how == "not-utf8":
        bad = data.replace(b'"eth9/rx-1"', b'"eth9/\xff\xfe-1"')
    elif how == "top-level-list":
        bad = b"[" + data + b"]"
    elif how == "entry-wrong-type":
        bad = text.replace('"original": "0"', '"original": 0', 1).encode()
    elif how == "duplicate-entry":
        bad = "".join([*lines[:2], lines[1], *lines[2:]]).encode()
    elif how == "unknown-flag":
        bad = text.replace('"flags": []', '"flags": ["rm -rf /"]', 1).encode()
    elif how == "zero-length":
        bad = b""
    else:
        bad = b"\x00garbage header\n" + b"".join(ln.encode() for ln in lines[1:])
    (state / "journal.json").write_bytes(bad)
    with Engine(Root(str(tree)), str(state)) as eng:
        rep = eng.recover()
        assert rep.action == "restored", rep
        assert rep.rollback is not None and rep.rollback.damaged, rep
        assert "journal.json" in rep.message
        # what was restored was restored to its journaled original; an entry whose
        # target no longer parses (bytes replaced) fails with a sentence and is kept
        for r in rep.rollback.results:
            if r.status == RESTORED:
                rel = FILES[(r.knob, r.target)]
                assert tree_bytes(tree)[rel] == before[rel]
            else:
                assert r.status == "failed" and "bad target" in r.message, r
        unparsable = [r for r in rep.rollback.results if r.status == "failed"]
        # and the engine goes on: a new apply journals from what the kernel shows now
        rep2 = eng.apply(CHANGES)
        assert not rep2.failed
        rb = eng.rollback()
        assert rb.ok is not unparsable
        assert [(r.knob, r.target) for r in rb.results if r.status == "failed"] == [
            (r.knob, r.target) for r in unparsable]
    kept = sorted(p for p in state.iterdir() if p.name.startswith("journal.json.corrupt"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad
    now = tree_bytes(tree)
    # nothing was ever written that is neither the original nor agentlatd's own value
    for rel in FILES.values():
        assert now[rel] in (before[rel], after[rel])


# regression: journal entries carry a CRC-32 of their fields since this test found it
def test_a_flipped_byte_inside_an_original_value_is_detected(tmp_path: pathlib.Path) -> None:
    tree, state, before, after, data = _applied(tmp_path)
    text = data.decode()
    i = text.index('"original": "0"', text.index('"eth9/rx-0"'))
    bad = (text[:i] + '"original": "4"' + text[i + len('"original": "0"'):]).encode()
    (state / "journal.json").write_bytes(bad)
    with Engine(Root(str(tree)), str(state)) as eng:
        eng.rollback()
    rel = FILES[("net.rps_cpus", "eth9/rx-0")]
    assert tree_bytes(tree)[rel] in (before[rel], after[rel])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "cut"]),
                          st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
                min_size=1, max_size=4))
def test_any_damage_gives_a_journal_error_or_a_salvage_never_a_crash(
        tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[str, int, bytes]]) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    tree, state, _before, after, data = _applied(base)
    bad = bytearray(data)
    for op, pos, blob in edits:
        pos = pos % max(1, len(bad))
        if op == "flip" and bad:
            bad[pos] ^= blob[0] or 1
        elif op == "insert":
            bad[pos:pos] = blob
        elif op == "delete":
            del bad[pos:pos + len(blob)]
        else:
            del bad[pos:]
    (state / "journal.json").write_bytes(bytes(bad))
    try:
        with Engine(Root(str(tree)), str(state)) as eng:
            eng.recover()
            eng.rollback()
    except JournalError as e:
        # refused with a sentence (another root, a newer format): nothing written
        assert "journal" in str(e)
        assert tree_bytes(tree) == after
        return
    except AgentlatdError as e:  # pragma: no cover - reported with the damage that caused it
        raise AssertionError(f"{type(e).__name__}: {e} for {bytes(bad)!r}") from e
    # a damaged file is always kept aside, byte for byte
    names = sorted(p.name for p in state.iterdir())
    if bytes(bad) != data:
        corrupt = [n for n in names if n.startswith("journal.json.corrupt")]
        if corrupt:
            assert (state / corrupt[0]).read_bytes() == bytes(bad)
    shutil.rmtree(base)


# -- the state directory full ----------------------------------------------------


@needs_root
def test_full_state_dir_refuses_to_change_anything(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    with tmpfs("64k", nr_inodes=32) as m:
        state = m / "state"
        state.mkdir()
        eng = Engine(Root(str(tree)), str(state))
        try:
            eng.recover()  # takes the lock while there is room for the lock file
            filler = fill(m)
            with pytest.raises(JournalError) as ei:
                eng.apply(CHANGES)
            assert "No space left on device" in str(ei.value) and "journal" in str(ei.value)
            assert tree_bytes(tree) == before  # nothing it could not journal
            assert not (state / "journal.json").exists()
            assert [p.name for p in state.iterdir() if ".tmp" in p.name] == []
            # room again: the same engine applies and rolls back normally
            filler.unlink()
            for p in m.glob("filler-*"):
                p.unlink()
            assert not eng.apply(CHANGES).failed
            assert tree_bytes(tree) != before
            assert eng.rollback().ok
        finally:
            eng.close()
    assert diff_keys(before, tree_bytes(tree)) == []


@needs_root
def test_state_dir_filling_up_between_ticks_keeps_the_journal_whole(
        tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    with tmpfs("64k", nr_inodes=32) as m:
        state = m / "state"
        eng = Engine(Root(str(tree)), str(state))
        try:
            assert not eng.apply(CHANGES[:2]).failed
            filler = fill(m)
            # the append log grows into the page it already has; keep changing
            # the two knobs until an append finds no room (bounded)
            for n in range(400):
                good = journal_read.read_json(str(state / "journal.json"))
                mid = tree_bytes(tree)
                try:
                    eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3" if n % 2 else "5",
                                      "t"), *CHANGES[2:]])
                except JournalError:
                    break
            else:
                raise AssertionError("the journal never ran out of space")
            # nothing was written, and the journal on disk is what it was, whole
            # (a short append is cut back: no half line for the next one)
            assert tree_bytes(tree) == mid
            assert journal_read.read_json(str(state / "journal.json")) == good
            # a rollback on the full disk still restores (unlink needs no space)
            rb = eng.rollback()
            assert rb.ok and rb.journal_removed
            filler.unlink()
        finally:
            eng.close()
    assert diff_keys(before, tree_bytes(tree)) == []


@needs_root
def test_cli_apply_on_a_full_state_dir_says_why_and_changes_nothing(
        tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    plan = plan_file(tmp_path / "plan.json", CHANGES)
    with tmpfs("64k", nr_inodes=32) as m:
        (m / "state").mkdir()
        (m / "state" / "lock").touch()
        fill(m)
        p = cli(["apply", "--root", str(tree), "--plan", str(plan), "--state-dir", str(m / "state")])
    assert p.returncode != 0
    assert "No space left on device" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert tree_bytes(tree) == before


@needs_root
def test_cli_rollback_on_a_full_state_dir_restores_everything(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    plan = plan_file(tmp_path / "plan.json", CHANGES)
    with tmpfs("64k", nr_inodes=32) as m:
        state = m / "state"
        p = cli(["apply", "--root", str(tree), "--plan", str(plan), "--state-dir", str(state)])
        assert p.returncode == 0, p.stdout + p.stderr
        (state / "lock").write_bytes(b"")  # as a crashed run leaves it: empty
        fill(m)
        p = cli(["rollback", "--root", str(tree), "--state-dir", str(state)])
        assert p.returncode == 0, p.stdout + p.stderr
        assert not (state / "journal.json").exists()
    assert diff_keys(before, tree_bytes(tree)) == []


# -- the state directory read-only ------------------------------------------------


@needs_root
@pytest.mark.parametrize("lock_exists", [False, True])
def test_read_only_state_dir_refuses_to_change_anything(tmp_path: pathlib.Path,
                                                        lock_exists: bool) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    plan = plan_file(tmp_path / "plan.json", CHANGES)
    with tmpfs("64k") as m:
        state = m / "state"
        state.mkdir()
        if lock_exists:
            (state / "lock").write_text("1\n")
        remount(m, "ro")
        with Engine(Root(str(tree)), str(state)) as eng, pytest.raises(JournalError) as ei:
            eng.apply(CHANGES)
        assert "Read-only file system" in str(ei.value) and str(state) in str(ei.value)
        assert tree_bytes(tree) == before
        p = cli(["apply", "--root", str(tree), "--plan", str(plan), "--state-dir", str(state)])
        assert p.returncode == 1 and "Read-only file system" in p.stderr, p.stdout + p.stderr
        assert "Traceback" not in p.stderr
        assert tree_bytes(tree) == before
        remount(m, "rw")


@needs_root
def test_a_running_engine_blocks_a_read_only_remount(tmp_path: pathlib.Path) -> None:
    """Why 'read-only mid-run' is the full-disk case: the lock fd is open for
    writing, so the kernel refuses `mount -o remount,ro` (EBUSY) while the
    engine (daemon) lives; only an emergency remount by the kernel could do it,
    and that fails atomic_write exactly as ENOSPC does (tested above)."""
    tree = small_tree(tmp_path / "tree")
    with tmpfs("64k") as m:
        eng = Engine(Root(str(tree)), str(m / "state"))
        try:
            eng.recover()
            p = subprocess.run(["mount", "-o", "remount,ro", str(m)], capture_output=True,
                               text=True, timeout=30, check=False)
            assert p.returncode != 0 and "busy" in p.stderr.lower(), p.stderr
        finally:
            eng.close()


@needs_root
def test_daemon_on_a_read_only_state_dir_does_not_start(tmp_path: pathlib.Path) -> None:
    from agentshelpers import env_for_children, policy_text
    with tmpfs("64k", ro=True) as m:
        (tmp_path / "agentlatd.toml").write_text(policy_text())
        p = subprocess.run([sys.executable, "-m", "agentlatd", "run", "--config",
                            str(tmp_path / "agentlatd.toml"), "--state-dir", str(m / "state"),
                            "--socket", str(tmp_path / "s.sock")], capture_output=True, text=True,
                           timeout=60, env=env_for_children(), check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "cannot use state directory" in p.stderr and "Read-only file system" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "s.sock").exists()


@needs_root
def test_daemon_with_a_full_state_dir_refuses_the_pin_and_keeps_serving() -> None:
    """Regression: a full state directory killed the daemon (the JournalError of
    Engine.apply escaped Daemon.turn); fixed by the agents engineer in
    daemon.py _locked_work / registry.place_pending after this test found it."""
    from agentshelpers import current_affinity, start_daemon, thread_affinities, wait_ticks, workdir
    from agentshelpers import policy_text as agents_policy
    with workdir() as d, tmpfs("256k", nr_inodes=64) as m:
        # the tmpfs itself, not a symlink to it (a state directory reached
        # through a symlink is refused: tests/hostile/test_trust_start.py)
        dm = start_daemon(d, agents_policy(), extra_args=("--state-dir", str(m)))
        child = subprocess.Popen(["sleep", "30"])
        try:
            fill(m)
            try:
                ans = dm.request("register", agent_id="a", pid=child.pid)
            except (OSError, ValueError) as e:
                raise AssertionError(f"no answer ({e}); daemon log:\n{dm.log[-1500:]}") from e
            assert ans["ok"] is False and ans["error"]["code"] == "unavailable", ans
            assert "No space left on device" in ans["error"]["message"], ans
            # nothing pinned after the refusal, over two counted ticks of each loop (a
            # retry would come at a tick; a bare sleep could end before one ran)
            wait_ticks(dm.status, 2)
            assert set(thread_affinities(child.pid).values()) == {current_affinity()}
            assert dm.proc.poll() is None and dm.request("ping")["ok"]
            assert dm.agents() == []
            # room again: the same daemon pins it
            for f in m.iterdir():
                if f.name.startswith("filler"):
                    f.unlink()
            ans = dm.request("register", agent_id="a", pid=child.pid)
            assert ans["ok"] and set(thread_affinities(child.pid).values()) == {"1"}, ans
        finally:
            child.kill()
            child.wait()
            if dm.proc.poll() is None:
                dm.proc.terminate()
                dm.proc.wait(20)
