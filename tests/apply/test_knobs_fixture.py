"""Knobs and the engine on writable copies of fixture trees, with injected errnos.

IRQ affinity cannot be written on this machine (its IRQs carry the
infrastructure), so the IRQ paths run here: on a copy of a recorded tree, with
a Root that answers EIO / ENOSPC / EBUSY / EINVAL where a real kernel would.
"""

from __future__ import annotations

import errno
import json
import pathlib
import re
import shlex

import pytest
from applyhelpers import (
    FAULTS,
    FaultRoot,
    cli,
    copy_fixture,
    diff_keys,
    plan_file,
    small_tree,
    tree_bytes,
)

from agentlatd.apply import irqbalance, knobs
from agentlatd.apply.engine import (
    CHANGED,
    CLAMPED,
    FAILED,
    MANAGED,
    PLANNED,
    SKIPPED,
    UNCHANGED,
    UNSUPPORTED,
    Engine,
)
from agentlatd.kernel.targets import DeviceTarget
from agentlatd.plan.changes import Change
from agentlatd.policy import loads
from agentlatd.sysfs.root import Root

CONTRACT = ("irq.affinity", "net.rps_cpus", "net.rps_flow_cnt", "net.xps_cpus", "net.threaded",
            "net.napi_defer_hard_irqs", "net.gro_flush_timeout", "net.coalesce", "napi.config",
            "sysctl", "block.rq_affinity")


# -- the registry -------------------------------------------------------------


def test_every_contract_knob_is_registered() -> None:
    for name in CONTRACT:
        k = knobs.get(name)
        assert k.name == name and k.help and k.context in ("irq", "sysfs", "proc", "netlink")
    assert knobs.get("irq.affinity").context == "irq"  # EIO there = managed IRQ


def test_register_is_public_and_refuses_duplicates() -> None:
    class Dummy(knobs.Knob):
        name = "test.dummy"
        help = "a test knob"

    k = knobs.register(Dummy())
    try:
        assert knobs.get("test.dummy") is k
        with pytest.raises(ValueError):
            knobs.register(Dummy())
        knobs.register(Dummy(), replace=True)
    finally:
        del knobs.REGISTRY["test.dummy"]
    with pytest.raises(KeyError) as ei:
        knobs.get("test.dummy")
    assert "irq.affinity" in str(ei.value)


@pytest.mark.parametrize("name,target,value,cmd", [
    ("irq.affinity", "45", "3", "echo 3 > /proc/irq/45/smp_affinity_list"),
    ("net.rps_cpus", "eth0/rx-3", "00000000,00000003",
     "echo 00000000,00000003 > /sys/class/net/eth0/queues/rx-3/rps_cpus"),
    ("net.xps_cpus", "eth0/tx-0", "1", "echo 1 > /sys/class/net/eth0/queues/tx-0/xps_cpus"),
    ("net.rps_flow_cnt", "eth0/rx-0", "4096",
     "echo 4096 > /sys/class/net/eth0/queues/rx-0/rps_flow_cnt"),
    ("net.threaded", "eth0", "1", "echo 1 > /sys/class/net/eth0/threaded"),
    ("net.gro_flush_timeout", "eth0", "20000", "echo 20000 > /sys/class/net/eth0/gro_flush_timeout"),
    ("block.rq_affinity", "nvme0n1", "2", "echo 2 > /sys/block/nvme0n1/queue/rq_affinity"),
    ("sysctl", "net.core.rps_sock_flow_entries", "32768",
     "sysctl -w net.core.rps_sock_flow_entries=32768"),
    ("net.coalesce", "eth0", "rx-usecs=20,adaptive-rx=off", "ethtool -C eth0 rx-usecs 20 adaptive-rx off"),
    ("napi.config", "eth0/irq45", "defer-hard-irqs=2",
     "echo 2 > /sys/class/net/eth0/napi_defer_hard_irqs  "
     "# eth0/irq45: device-wide equivalent of netdev napi-set"),
])
def test_shell_commands_a_person_can_paste(name: str, target: str, value: str, cmd: str) -> None:
    assert knobs.get(name).shell(target, value) == cmd


@pytest.mark.parametrize("name,a,b,same", [
    ("net.rps_cpus", "00000000,00000003", "3", True),
    ("net.rps_cpus", "00000003", "7", False),
    ("irq.affinity", "0-1", "0,1", True),
    ("irq.affinity", "0-3", "0-2", False),
    ("net.rps_flow_cnt", "4096", "4096", True),
    ("net.coalesce", "rx-usecs=20,tx-usecs=50,adaptive-rx=off", "adaptive-rx=off,rx-usecs=20", True),
    ("net.coalesce", "rx-usecs=20,adaptive-rx=on", "rx-usecs=20,adaptive-rx=off", False),
    ("napi.config", "defer-hard-irqs=2,threaded=enabled", "threaded=1", True),
    ("sysctl", "4096\t131072  6291456", "4096 131072 6291456", True),
])
def test_semantic_equality(name: str, a: str, b: str, same: bool) -> None:
    assert knobs.get(name).equal(a, b) is same


@pytest.mark.parametrize("name,target", [
    ("irq.affinity", "../45"), ("irq.affinity", "45/../../etc"), ("net.rps_cpus", "eth0/rx-0/.."),
    ("net.rps_cpus", "../eth0/rx-0"), ("net.rps_cpus", "eth0/tx-0"), ("net.xps_cpus", "eth0/rx-0"),
    ("net.threaded", "eth0/../../x"), ("net.threaded", ".."), ("block.rq_affinity", "../sda"),
    ("sysctl", "net/core/x"), ("sysctl", "../../etc/passwd"), ("napi.config", "eth0"),
    ("net.coalesce", "eth0/rx-0"),
])
def test_targets_outside_the_knob_syntax_are_refused(name: str, target: str) -> None:
    with pytest.raises(ValueError):
        knobs.get(name).check_target(target)


def test_values_are_checked_before_writing(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path)
    with Engine(Root(str(tree)), str(tmp_path / "st")) as eng:
        rep = eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3; rm -rf /", "t")])
    assert rep.results[0].status == FAILED and rep.results[0].errclass == "invalid"
    assert (tree / "sys/class/net/eth9/queues/rx-0/rps_cpus").read_text() == "0\n"


# -- apply / verify / rollback on a fixture copy ---------------------------------


def _server_changes() -> list[Change]:
    """NIC queue IRQs of the server fixture to node-0 CPUs, RPS/XPS, NAPI knobs,
    rq_affinity, a sysctl, and managed NVMe queue IRQs 43-45."""
    ch = [Change.parse("irq.affinity", str(76 + i), "", str(32 + i), f"comp{i}") for i in range(8)]
    ch += [Change.parse("irq.affinity", str(n), "", "2", "nvme") for n in (43, 44, 45)]
    ch += [Change.parse("net.rps_cpus", f"ens1f0/rx-{i}", "", "0000000f", "rps") for i in range(4)]
    ch += [Change.parse("net.rps_flow_cnt", f"ens1f0/rx-{i}", "", "4096", "rfs") for i in range(4)]
    ch += [Change.parse("net.xps_cpus", "ens1f0/tx-0", "", "2", "xps")]
    ch += [Change.parse("net.threaded", "ens1f0", "", "1", "napi"),
           Change.parse("net.napi_defer_hard_irqs", "ens1f0", "", "2", "napi"),
           Change.parse("net.gro_flush_timeout", "ens1f0", "", "20000", "napi"),
           Change.parse("napi.config", "ens1f0/irq77", "", "defer-hard-irqs=2", "napi"),
           Change.parse("block.rq_affinity", "nvme0n1", "", "2", "blk"),
           Change.parse("sysctl", "net.core.rps_sock_flow_entries", "", "32768", "rfs"),
           Change.parse("net.coalesce", "ens1f0", "", "rx-usecs=20", "coalesce")]
    return ch


def test_apply_then_rollback_leaves_the_fixture_byte_for_byte(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("server-2s64t", tmp_path)
    before = tree_bytes(tree)
    # the kernel answers EIO for managed IRQs (kernel/irq/proc.c write_irq_affinity)
    root = FaultRoot(tree, {f"proc/irq/{n}/smp_affinity_list": errno.EIO for n in (43, 44, 45)})
    with Engine(root, str(tmp_path / "state")) as eng:
        rep = eng.apply(_server_changes())
        by = {(r.knob, r.target): r for r in rep.results}
        assert by[("irq.affinity", "76")].status == CHANGED
        assert (tree / "proc/irq/77/smp_affinity_list").read_text() == "33\n"
        assert (tree / "proc/irq/77/effective_affinity_list").read_text() == "33\n"
        assert by[("irq.affinity", "43")].status == MANAGED
        assert by[("irq.affinity", "43")].errclass == "managed"
        assert by[("net.rps_cpus", "ens1f0/rx-0")].status == CHANGED
        assert by[("sysctl", "net.core.rps_sock_flow_entries")].status == CHANGED
        # netlink knobs never reach the live kernel from a recorded tree
        co = by[("net.coalesce", "ens1f0")]
        assert co.status == UNSUPPORTED and "recorded tree" in co.message
        assert not rep.failed
        assert eng.managed() == {("irq.affinity", str(n)) for n in (43, 44, 45)}
        # already right: nothing is written a second time
        writes = sum(root.attempts.values())
        again = eng.apply(_server_changes())
        assert {r.status for r in again.results} == {UNCHANGED, MANAGED, UNSUPPORTED}
        assert sum(root.attempts.values()) == writes
        # managed IRQs are never retried
        assert all(root.writes(f"proc/irq/{n}/smp_affinity_list") == 1 for n in (43, 44, 45))
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed, rb.to_json()
    assert rb.count("managed") == 3
    assert diff_keys(before, tree_bytes(tree)) == []
    assert not (tmp_path / "state" / "journal.json").exists()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_injected_errno_is_classified_and_the_others_still_apply(
        tmp_path: pathlib.Path, fault: str) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    bad = "proc/irq/42/smp_affinity_list"
    root = FaultRoot(tree, {bad: FAULTS[fault]})
    changes = [Change.parse("irq.affinity", str(n), "", "1", "t") for n in range(40, 45)]
    with Engine(root, str(tmp_path / "state")) as eng:
        rep = eng.apply(changes)
        r42 = next(r for r in rep.results if r.target == "42")
        # EIO (6.1) and EPERM (6.12, 0444 files) on smp_affinity: a managed IRQ
        managed = fault in ("EIO", "EPERM")
        want = {"EIO": ("managed", MANAGED), "EPERM": ("managed", MANAGED),
                "ENOSPC": ("no_space", FAILED), "EBUSY": ("transient", FAILED),
                "EINVAL": ("invalid", FAILED)}[fault]
        assert (r42.errclass, r42.status) == want
        assert fault in r42.message and bad in r42.message
        assert [r.status for r in rep.results if r.target != "42"] == [CHANGED] * 4
        assert rep.failed is not managed
        # transient / no-space are tried again on the next apply; managed never;
        # an invalid value not until the next machine rescan (forget_refusals)
        held = fault == "EINVAL"
        eng.apply(changes)
        assert root.writes(bad) == (1 if managed or held else 2)
        if held:
            eng.forget_refusals()
            eng.apply(changes)
            assert root.writes(bad) == 2
        # a failed write left the kernel as it was: nothing journaled for it
        keys = {e.target for e in eng.entries()}
        assert ("42" in keys) is managed
        rb = eng.rollback()
    assert rb.ok
    assert diff_keys(before, tree_bytes(tree)) == []


def test_effective_affinity_outside_the_mask_is_reported(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    (tree / "proc/irq/40/effective_affinity_list").write_text("3\n")
    root = FaultRoot(tree, stuck_effective={"proc/irq/40/smp_affinity_list"})
    with Engine(root, str(tmp_path / "state")) as eng:
        rep = eng.apply([Change.parse("irq.affinity", "40", "0-3", "1", "t"),
                         Change.parse("irq.affinity", "41", "0-3", "2-3", "t")])
        r40, r41 = rep.results
        assert r40.status == CLAMPED and "effective 3" in r40.after
        assert r41.status == CHANGED  # effective 2 is inside 2-3
        # smp_affinity_list reads "1" as written: not drift
        assert eng.check_drift() == []


def test_kernel_rounding_is_reported_clamped_not_drift(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    with Engine(FaultRoot(tree), str(tmp_path / "state")) as eng:
        rep = eng.apply([Change.parse("net.rps_flow_cnt", "eth9/rx-0", "0", "100", "t")])
        assert rep.results[0].status == CLAMPED and rep.results[0].after == "128"
        assert eng.check_drift() == []
        assert eng.entries()[0].written == "128"


def test_dry_run_writes_and_journals_nothing(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    with Engine(Root(str(tree)), str(tmp_path / "state")) as eng:
        rep = eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t"),
                         Change.parse("net.rps_cpus", "eth9/rx-1", "", "0", "t")], dry_run=True)
    assert [r.status for r in rep.results] == [PLANNED, UNCHANGED]
    assert tree_bytes(tree) == before
    assert not (tmp_path / "state" / "journal.json").exists()


def test_unknown_knob_fails_alone(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    with Engine(Root(str(tree)), str(tmp_path / "state")) as eng:
        rep = eng.apply([Change("no.such", DeviceTarget("x"), "", "1", "t"),
                         Change.parse("net.threaded", "eth9", "", "1", "t"),
                         Change.parse("net.threaded", "eth7", "", "1", "t")])
    st = [(r.status, r.errclass) for r in rep.results]
    assert st == [(FAILED, "invalid"), (CHANGED, None), (FAILED, "gone")]


def test_original_is_kept_across_applies(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    with Engine(Root(str(tree)), str(state)) as eng:
        eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t")])
    with Engine(Root(str(tree)), str(state)) as eng:  # a new run adopts the journal
        rec = eng.recover()
        assert rec.action == "adopted"
        eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "c", "t")])
        (entry,) = eng.entries()
        assert entry.original == "0" and entry.written == "c"
        rb = eng.rollback()
    assert rb.ok
    assert (tree / "sys/class/net/eth9/queues/rx-0/rps_cpus").read_text() == "0\n"


# -- drift ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["yield", "reassert"])
def test_drift(tmp_path: pathlib.Path, mode: str) -> None:
    tree = small_tree(tmp_path / "tree")
    pol = loads(f'[daemon]\ndrift = "{mode}"\n')
    f = tree / "sys/class/net/eth9/queues/rx-0/rps_cpus"
    with Engine(Root(str(tree)), str(tmp_path / "state"), policy=pol) as eng:
        eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t")])
        assert eng.check_drift() == []
        f.write_text("8\n")  # another writer
        (d,) = eng.check_drift()
        assert (d.knob, d.target, d.expected, d.actual) == ("net.rps_cpus", "eth9/rx-0", "3", "8")
        if mode == "yield":
            assert d.action == "yielded"
            assert f.read_text() == "8\n"
            rep = eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t")])
            assert rep.results[0].status == SKIPPED and "yield" in rep.results[0].message
            assert eng.check_drift() == []  # no longer managed
        else:
            assert d.action == "reasserted"
            assert f.read_text() == "3\n"
        rb = eng.rollback()  # the original comes back either way
    assert rb.ok and f.read_text() == "0\n"


# -- irqbalance ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cooperate", "refuse", "ignore"])
def test_irqbalance_coexistence(tmp_path: pathlib.Path, mode: str) -> None:
    tree = small_tree(tmp_path / "tree")
    (tree / "proc/4242").mkdir()
    (tree / "proc/4242/comm").write_text("irqbalance\n")
    (tree / "proc/77").mkdir()
    (tree / "proc/77/comm").write_text("sshd\n")
    assert irqbalance.running(Root(str(tree))) == (4242,)
    pol = loads(f'[daemon]\nirqbalance = "{mode}"\n')
    with Engine(FaultRoot(tree), str(tmp_path / "state"), policy=pol) as eng:
        rep = eng.apply([Change.parse("irq.affinity", "40", "", "1", "t"),
                         Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t")])
    irq, rps = rep.results
    assert rps.status == CHANGED
    assert "irqbalance is running (pid 4242)" in rep.notes[0]
    if mode in ("refuse", "cooperate"):
        assert irq.status == SKIPPED and mode in irq.message
        assert (tree / "proc/irq/40/smp_affinity_list").read_text() == "0-3\n"
    else:
        assert irq.status == CHANGED and "drift" in rep.notes[0]


# -- the CLI against fixture trees ----------------------------------------------------


def test_cli_apply_print_rollback_on_a_fixture_copy(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("server-2s64t", tmp_path)
    before = tree_bytes(tree)
    plan = plan_file(tmp_path / "plan.json", [c for c in _server_changes()
                                              if c.target_text not in ("43", "44", "45")])
    p = cli(["apply", "--root", str(tree), "--plan", str(plan), "--json"])
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    # a recorded tree's effective_affinity_list is a plain file that does not
    # follow the write: reported clamped, as an IRQ that has not fired since
    assert out["summary"] == {"changed": 15, "clamped": 8, "unsupported": 1}
    clamped = [r for r in out["results"] if r["status"] == "clamped"]
    assert clamped[0]["after"] == "32 (effective 0)"
    # the journal lives inside the tree by default: never the host's /run
    assert out["journal"] == str(tree / "run/agentlatd/journal.json")
    p = cli(["rollback", "--root", str(tree), "--print"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("# agentlatd rollback of")
    # reverse order: the last change is restored first
    assert lines[1] == "sysctl -w net.core.rps_sock_flow_entries=0"
    assert lines[-1] == "echo 0 > /proc/irq/76/smp_affinity_list"
    # a device knob's line runs only while the device is the one journaled
    assert [ln for ln in lines if "echo 00000000,00000001 > /sys/class/net/ens1f0/queues/tx-0/"
            "xps_cpus;" in ln and ln.startswith('if [ "$(cat /sys/class/net/ens1f0/ifindex')
            and "device replaced, original not restored" in ln], lines
    assert "# CPUs 0" in lines
    assert tree_bytes(tree) != before  # --print wrote nothing
    p = cli(["rollback", "--root", str(tree)])
    assert p.returncode == 0, p.stdout + p.stderr
    # napi.config's sysfs fallback and net.napi_defer_hard_irqs share a file:
    # restoring the later one restores both
    assert "22 restored, 1 already original" in p.stdout and "removed" in p.stdout
    assert all(len(ln) <= 80 for ln in p.stdout.splitlines())
    assert diff_keys(before, tree_bytes(tree)) == []


def test_cli_text_report_fits_80_columns_and_says_why(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    plan = plan_file(tmp_path / "plan.json", [
        Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t"),
        Change.parse("net.rps_cpus", "eth9/rx-1", "", "0", "t"),
        Change.parse("net.coalesce", "eth9", "", "rx-usecs=20,tx-usecs=20,adaptive-rx=off", "t"),
        Change.parse("net.threaded", "eth8", "", "1", "t")])
    p = cli(["apply", "--root", str(tree), "--plan", str(plan)])
    assert p.returncode == 1  # a real failure (no eth8)
    text = p.stdout
    assert all(len(ln) <= 80 for ln in text.splitlines()), text
    assert "1 changed" in text and "1 already right" in text and "1 FAILED" in text
    assert "ENOENT" in text and "unsupported" in text and "journal:" in text


@pytest.mark.parametrize(("bad", "said"), [
    ({"knob": "net.rps_cpus", "target": "eth9/tx-0"}, "bad target 'eth9/tx-0' for net.rps_cpus"),
    ({"knob": "irq.affinity", "target": "../45"}, "bad target '../45' for irq.affinity"),
    ({"knob": "no.such", "target": "eth9"}, "no target syntax known for knob 'no.such'"),
])
def test_cli_apply_plan_with_a_bad_target_applies_nothing(
        tmp_path: pathlib.Path, bad: dict[str, str], said: str) -> None:
    """A plan file's targets are read into typed keys before anything is applied: one
    its knob cannot take is an error that names it, and the tree is left as it was."""
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"changes": [
        {"knob": "net.rps_cpus", "target": "eth9/rx-0", "current": "", "desired": "3"},
        {**bad, "current": "", "desired": "3"}]}))
    p = cli(["apply", "--root", str(tree), "--plan", str(plan)])
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"plan {plan}: change 2: {said}" in p.stderr, p.stderr
    assert tree_bytes(tree) == before


def test_cli_refuses_the_real_root_without_root_privileges(nobody_python: list[str]) -> None:
    """Run as uid 65534 wherever the checkout is (nobody cannot traverse /root)."""
    import subprocess
    for cmd in (["apply", "--plan", "/dev/null"], ["rollback"]):
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            *nobody_python, "-m", "agentlatd", *cmd],
                           capture_output=True, text=True, timeout=60, check=False, cwd="/")
        assert p.returncode == 1, p.stderr
        assert "run it as root" in p.stderr


def test_cli_plans_and_round_trips_every_fixture(tmp_path: pathlib.Path) -> None:
    """The real planner over each recorded machine, applied and rolled back."""
    from applyhelpers import FIXTURES
    names = sorted(p.name for p in FIXTURES.iterdir() if (p / "proc").is_dir())
    assert names
    for name in names:
        tree = copy_fixture(name, tmp_path)
        before = tree_bytes(tree)
        p = cli(["apply", "--root", str(tree), "--json"])
        assert p.returncode in (0, 1), p.stderr
        out = json.loads(p.stdout)
        assert out["summary"].get("changed", 0) > 0, (name, out["summary"])
        p = cli(["rollback", "--root", str(tree)])
        assert p.returncode == 0, (name, p.stdout, p.stderr)
        assert diff_keys(before, tree_bytes(tree)) == [], name


def test_apply_adopts_a_value_already_where_the_plan_wants_it(tmp_path: pathlib.Path) -> None:
    """A driver re-spread its queues (CPU hotplug) to exactly where the new plan wants
    them: no write, and the journal's `written` follows, so that drift is not called."""
    tree = small_tree(tmp_path / "tree")
    f = tree / "sys/class/net/eth9/queues/rx-0/rps_cpus"
    with Engine(Root(str(tree)), str(tmp_path / "state"), policy=loads("")) as eng:
        eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t")])
        f.write_text("1\n")  # the kernel's own rewrite
        rep = eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "1", "t")])  # the new plan
        assert rep.results[0].status == "unchanged"
        (entry,) = eng.entries()
        assert entry.written == "1" and entry.original == "0"
        assert eng.check_drift() == []
    # a fresh process reads the adopted value from the journal file, not the old one
    with Engine(Root(str(tree)), str(tmp_path / "state"), policy=loads("")) as eng:
        eng.recover()
        assert [e.written for e in eng.entries()] == ["1"]
        rb = eng.rollback()
    assert rb.ok and f.read_text() == "0\n"


def test_unyield_manages_a_yielded_knob_again(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    f = tree / "sys/class/net/eth9/queues/rx-0/rps_cpus"
    with Engine(Root(str(tree)), str(tmp_path / "state"), policy=loads("")) as eng:
        eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t")])
        f.write_text("8\n")
        (d,) = eng.check_drift()
        assert d.action == "yielded"
        assert eng.unyield([("net.rps_cpus", "eth9/rx-0"), ("net.rps_cpus", "nope/rx-0")]) == 1
        assert eng.unyield([("net.rps_cpus", "eth9/rx-0")]) == 0  # already managed
        rep = eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t")])
        assert rep.results[0].status == "changed" and f.read_text() == "3\n"
        assert eng.check_drift() == []


def test_apply_with_state_dir_hints_plain_rollback(tmp_path: pathlib.Path) -> None:
    """The hint after `apply --state-dir D` must find D's journal; a bare
    `agentlatd rollback` looks elsewhere and says there is nothing to roll back."""
    tree = copy_fixture("server-2s64t", tmp_path)
    state = tmp_path / "my state"
    plan = plan_file(tmp_path / "plan.json", _server_changes()[:2])
    p = cli(["apply", "--root", str(tree), "--plan", str(plan), "--state-dir", str(state)])
    assert p.returncode == 0, p.stdout + p.stderr
    hint = f"agentlatd rollback --root {tree} --state-dir '{state}'"
    assert f"`{hint}`" in " ".join(p.stdout.split()), p.stdout
    p = cli(shlex.split(hint)[1:])  # the hint, as a person pastes it
    assert p.returncode == 0 and "2 restored" in p.stdout, p.stdout + p.stderr


def test_nothing_to_roll_back_printed_twice(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("server-2s64t", tmp_path)
    p = cli(["rollback", "--root", str(tree), "--state-dir", str(tmp_path / "empty")])
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("nothing to roll back") == 1, p.stdout


def test_two_notations_for_the_same_value(tmp_path: pathlib.Path) -> None:
    """RPS/XPS read as CPU lists everywhere people and JSON readers look (as `status`
    prints them); the hex mask only where it is the literal value written."""
    tree = copy_fixture("server-2s64t", tmp_path)
    p = cli(["plan", "--root", str(tree)])
    assert "net.rps_cpus ens1f0/rx-[0-15]: none -> 0,32" in p.stdout, p.stdout
    assert "net.xps_cpus ens1f0/tx-1: 1 -> 32" in p.stdout
    assert "00000001" not in p.stdout
    doc = json.loads(cli(["plan", "--root", str(tree), "--json"]).stdout)
    rps = next(c for c in doc["changes"] if c["knob"] == "net.rps_cpus")
    assert (rps["before"], rps["after"]) == ("", "0,32")
    assert rps["desired"] == "00000001,00000001"  # what `apply --plan` writes
    state = str(tmp_path / "state")
    p = cli(["apply", "--root", str(tree), "--state-dir", state, "--json"])
    res = [r for r in json.loads(p.stdout)["results"] if r["knob"] == "net.xps_cpus"]
    assert res and not any(re.fullmatch(r"[0-9a-f]{8}(,[0-9a-f]{8})*", r["after"]) for r in res), res
    assert {r["target"]: r["after"] for r in res}["ens1f0/tx-1"] == "32"
    p = cli(["rollback", "--root", str(tree), "--state-dir", state, "--print"])
    lines = p.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if "tx-1/xps_cpus" in ln)
    # the mask is the literal value written; the comment above it says the CPUs
    assert "then echo 00000000,00000002 > /sys/class/net/ens1f0/queues/tx-1/xps_cpus;" in lines[i]
    assert lines[i - 1] == "# CPUs 1", lines[i - 1:i + 1]
    p = cli(["rollback", "--root", str(tree), "--state-dir", state])
    assert "00000000" not in p.stdout, p.stdout


def test_json_of_every_command_carries_a_schema_version(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("server-2s64t", tmp_path)
    state = str(tmp_path / "state")
    docs = {cmd[0]: json.loads(cli([*cmd, "--json"]).stdout) for cmd in (
        ["status", "--root", str(tree), "--interval", "0"],
        ["plan", "--root", str(tree)],
        ["apply", "--root", str(tree), "--state-dir", state],
        ["rollback", "--root", str(tree), "--state-dir", state],
        ["capture", "--root", str(tree), "--out", str(tmp_path / "cap")])}
    for name, doc in docs.items():
        assert next(iter(doc)) == "schema_version" and doc["schema_version"] == 1, name
    # the same thing, the same name: apply and rollback both say ok, before and after
    assert docs["apply"]["ok"] is True and docs["rollback"]["ok"] is True
    for name in ("apply", "rollback"):
        assert {"before", "after"} <= set(docs[name]["results"][0]), name
    assert {"before", "after"} <= set(docs["plan"]["changes"][0])


def test_unsupported_knobs_are_rewritten_every_tick(tmp_path: pathlib.Path) -> None:
    """A knob the kernel refuses for good (threaded NAPI on a veth: EOPNOTSUPP) is tried
    once per machine rescan, not at every tick; the journal is not touched for it."""
    import errno as errno_mod
    tree = small_tree(tmp_path / "tree")
    bad = "sys/class/net/eth9/threaded"
    root = FaultRoot(tree, {bad: errno_mod.EOPNOTSUPP})
    changes = [Change.parse("net.threaded", "eth9", "", "1", "t"),
               Change.parse("net.rps_cpus", "eth9/rx-0", "", "2", "t")]
    state = tmp_path / "state"
    with Engine(root, str(state)) as eng:
        first = eng.apply(changes)
        assert [r.status for r in first.results] == [UNSUPPORTED, CHANGED]
        journal_file = state / "journal.json"
        stamp = journal_file.stat().st_mtime_ns
        for _ in range(20):  # twenty ticks
            rep = eng.apply(changes)
            r = rep.results[0]
            assert r.status == UNSUPPORTED and r.errclass == "unsupported"
            assert "Operation not supported" in r.message and "next machine rescan" in r.message
        assert root.writes(bad) == 1
        assert journal_file.stat().st_mtime_ns == stamp
        assert set(eng.refused()) == {("net.threaded", "eth9")}
        # a changed value is a new question for the kernel
        eng.apply([Change.parse("net.threaded", "eth9", "", "0", "t")])
        assert root.writes(bad) == 1  # "0" is already there: nothing to write
        eng.forget_refusals()  # the daemon's machine rescan
        eng.apply(changes)
        assert root.writes(bad) == 2
        assert eng.rollback().ok
