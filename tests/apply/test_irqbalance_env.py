"""irqbalance.env_banned_cpus: the home CPUs banned in irqbalance's environment
file (for an irqbalance whose socket agentlatd cannot use), on recorded trees.

Only fake roots here: the host's /etc is never written and systemctl is never
run (the knob restarts irqbalance only on the live root; a test that wants to
see the restart asked for injects its own restarter). The real irqbalance
reads the edited file in the VM guest (tests/vm/guest/test_agentlatd_7_irqbalance.py).

Real formats:
  - DEBIAN_UNIT, DEBIAN_DEFAULT: Debian's irqbalance 1.9.2-2 package
    (lib/systemd/system/irqbalance.service, etc/default/irqbalance), unpacked
    by tests/run.sh into the VM lab cache; the default file is read from there
    when present (it is 1.5 KB of comments), else a shortened copy is used.
  - FEDORA_SYSCONFIG: Fedora/RHEL ship /etc/sysconfig/irqbalance (irqbalance's
    misc/irqbalance.env, installed there by the spec file) with
    IRQBALANCE_BANNED_CPULIST documented; tuned's plugin_irqbalance.py edits
    that file (consts.IRQBALANCE_SYSCONFIG_FILE).
  - cgroup lines: Documentation/admin-guide/cgroup-v2.rst (/proc/PID/cgroup
    "0::/system.slice/..."), v1 "1:name=systemd:/system.slice/...".
"""

from __future__ import annotations

import os
import pathlib
import shlex
import signal

import pytest
from applyhelpers import cli, plan_file

from agentlatd.apply import irqbalance, journal_read
from agentlatd.apply import irqbalance_env as ie
from agentlatd.apply.engine import CHANGED, FAILED, RESTORED, Engine, rollback_commands
from agentlatd.cpuset import CpuSet
from agentlatd.errors import KernelError
from agentlatd.plan.changes import Change
from agentlatd.sysfs.root import Root

LAB_DEFAULT = pathlib.Path(os.environ.get("AGENTLATD_VMLAB", "/var/tmp/agentlatd-vmlab")) / \
    "irqbalance/root/etc/default/irqbalance"
DEBIAN_UNIT = """[Unit]
Description=irqbalance daemon
Documentation=man:irqbalance(1)
Documentation=https://github.com/Irqbalance/irqbalance
ConditionVirtualization=!container
ConditionCPUs=>1

[Service]
EnvironmentFile=-/usr/lib/irqbalance/defaults.env
EnvironmentFile=-/etc/default/irqbalance
ExecStart=/usr/sbin/irqbalance --foreground $IRQBALANCE_ARGS
ReadOnlyPaths=/
ReadWritePaths=/proc/irq
RestrictAddressFamilies=AF_UNIX
RuntimeDirectory=irqbalance/

[Install]
WantedBy=multi-user.target
"""
DEBIAN_DEFAULT = (LAB_DEFAULT.read_text() if LAB_DEFAULT.exists() else
                  "# irqbalance is a daemon process that distributes interrupts across\n"
                  "#IRQBALANCE_ONESHOT=\n#IRQBALANCE_BANNED_CPUS=\n"
                  "#IRQBALANCE_BANNED_CPULIST=\n#IRQBALANCE_ARGS=\n")
FEDORA_SYSCONFIG = ("# irqbalance is a daemon process that distributes interrupts across\n"
                    "#IRQBALANCE_ONESHOT=\n"
                    "IRQBALANCE_BANNED_CPULIST=7\n"
                    "IRQBALANCE_ARGS=\"--hintpolicy=subset\"")  # no final newline
TARGET = "/etc/default/irqbalance"


class Restarts:
    """A restarter that records the units it was asked to restart."""

    def __init__(self) -> None:
        self.units: list[str] = []

    def __call__(self, root: Root, unit: str) -> None:
        self.units.append(unit)


def tree(base: pathlib.Path, default: str | None = DEBIAN_DEFAULT, *, socket: bool = False,
         cgroup: str = "0::/system.slice/irqbalance.service\n") -> pathlib.Path:
    def put(rel: str, text: str) -> None:
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    put("proc/4242/comm", "irqbalance\n")
    put("proc/4242/cgroup", cgroup)
    put("lib/systemd/system/irqbalance.service", DEBIAN_UNIT)
    put("sys/devices/system/cpu/isolated", "\n")
    put("sys/devices/system/cpu/nohz_full", "(null)\n")
    put("proc/sys/kernel/random/boot_id", "11111111-2222-3333-4444-555555555555\n")
    (base / "etc/default").mkdir(parents=True, exist_ok=True)
    if default is not None:
        put("etc/default/irqbalance", default)
    if socket:
        put("run/irqbalance/irqbalance4242.sock", "")
    return base


# -- pure ---------------------------------------------------------------------

def test_env_ban_follows_setup_banned_cpus_order() -> None:
    assert ie.env_ban(DEBIAN_DEFAULT) is None  # every line commented out
    assert ie.env_ban(FEDORA_SYSCONFIG) == CpuSet({7})
    # a non-empty mask wins over the list (cputree.c setup_banned_cpus())
    assert ie.env_ban("IRQBALANCE_BANNED_CPULIST=1\nIRQBALANCE_BANNED_CPUS=0000000c\n") == \
        CpuSet({2, 3})
    assert ie.env_ban('IRQBALANCE_BANNED_CPUS=""\nIRQBALANCE_BANNED_CPULIST="4-5"\n') == \
        CpuSet({4, 5})
    assert ie.env_ban(ie.ABSENT) is None
    with pytest.raises(ValueError):
        ie.env_ban("IRQBALANCE_BANNED_CPULIST=x-y\n")


def test_with_ban_appends_one_block_and_keeps_every_byte_before_it() -> None:
    for text in (DEBIAN_DEFAULT, FEDORA_SYSCONFIG, "", ie.ABSENT):
        out = ie.with_ban(text, CpuSet({2, 3, 7}))
        base = "" if text == ie.ABSENT else text
        assert out.startswith(base)
        assert ie.env_ban(out) == CpuSet({2, 3, 7})
        assert "IRQBALANCE_BANNED_CPUS=8c\n" in out  # for irqbalance < 1.8
        # written again (a new plan): the old block is replaced, not stacked
        again = ie.with_ban(out, CpuSet({2}))
        assert again.count(ie.MARKER) == 1 and ie.env_ban(again) == CpuSet({2})
        assert ie.restored(out, text, CpuSet({2, 3, 7})) == (text, "")


def test_restore_guard_keeps_other_edits_and_refuses_a_changed_ban() -> None:
    ours = ie.with_ban(FEDORA_SYSCONFIG, CpuSet({2, 3}))
    edited = ours.replace('IRQBALANCE_ARGS="--hintpolicy=subset"',
                          'IRQBALANCE_ARGS="--hintpolicy=ignore"')
    text, note = ie.restored(edited, FEDORA_SYSCONFIG, CpuSet({2, 3}))
    assert ie.MARKER not in text and "--hintpolicy=ignore" in text and "other edits" in note
    assert ie.env_ban(text) == CpuSet({7})
    changed = ours.replace("IRQBALANCE_BANNED_CPULIST=2-3", "IRQBALANCE_BANNED_CPULIST=1-3")
    with pytest.raises(ValueError, match="another writer"):
        ie.restored(changed, FEDORA_SYSCONFIG, CpuSet({2, 3}))
    with pytest.raises(ValueError, match="another writer"):
        ie.restored(FEDORA_SYSCONFIG + "\n", FEDORA_SYSCONFIG, CpuSet({2, 3}))


def test_unit_and_environment_file_of_the_running_irqbalance() -> None:
    assert ie.unit_of("0::/system.slice/irqbalance.service\n") == "irqbalance.service"
    assert ie.unit_of("12:cpuset:/\n1:name=systemd:/system.slice/irqbalance.service\n") == \
        "irqbalance.service"
    assert ie.unit_of("0::/user.slice/user-0.slice/session-3.scope\n") is None
    files = ie.environment_files([DEBIAN_UNIT])
    assert files == ["/usr/lib/irqbalance/defaults.env", "/etc/default/irqbalance"]
    assert ie.pick_env_file(files) == "/etc/default/irqbalance"
    # a drop-in that resets the list and names its own file
    drop = "[Service]\nEnvironmentFile=\nEnvironmentFile=-/etc/irqbalance.env\n"
    assert ie.pick_env_file(ie.environment_files([DEBIAN_UNIT, drop])) == "/etc/irqbalance.env"


# -- the channel ----------------------------------------------------------------

def test_channel_is_the_socket_when_it_exists_else_the_units_environment_file(
        tmp_path: pathlib.Path) -> None:
    root = Root(str(tree(tmp_path / "t", FEDORA_SYSCONFIG)))
    ch = ie.choose(root, (4242,), ())
    # Debian's unit passes $IRQBALANCE_ARGS: IRQs can be handed over (none banned yet)
    assert ch == ie.Channel("/etc/default/irqbalance", CpuSet({7}), ())
    # no ban in the file: irqbalance bans the isolated and nohz_full CPUs itself
    t2 = tree(tmp_path / "t2")
    (t2 / "sys/devices/system/cpu/isolated").write_text("5\n")
    assert ie.choose(Root(str(t2)), (4242,), ()).base == CpuSet({5})
    # RHEL: no unit in the tree, /etc/sysconfig/irqbalance exists
    t3 = tree(tmp_path / "t3", None, cgroup="")
    (t3 / "etc/sysconfig").mkdir(parents=True)
    (t3 / "etc/sysconfig/irqbalance").write_text(FEDORA_SYSCONFIG)
    (t3 / "etc/default").rmdir()
    assert ie.choose(Root(str(t3)), (4242,), ()).env_file == "/etc/sysconfig/irqbalance"
    # a journaled ban keeps its channel, with the base from the journaled original
    assert ie.choose(root, (4242,), [(ie.NAME, "/etc/x", "IRQBALANCE_BANNED_CPULIST=1\n")]) \
        == ie.Channel("/etc/x", CpuSet({1}), ())


# -- the knob through the engine ----------------------------------------------------

def test_knob_bans_and_restores_the_file_byte_identical(tmp_path: pathlib.Path) -> None:
    for name, original in (("debian", DEBIAN_DEFAULT), ("fedora", FEDORA_SYSCONFIG),
                           ("none", None)):
        t = tree(tmp_path / name, original)
        path = t / "etc/default/irqbalance"
        with Engine(Root(str(t)), str(tmp_path / f"state-{name}")) as eng:
            rep = eng.apply([Change.parse(ie.NAME, TARGET, "", "2-3,7", "t")])
            assert [r.status for r in rep.results] == [CHANGED], rep.results
            assert ie.env_ban(path.read_text()) == CpuSet({2, 3, 7})
            assert eng.check_drift() == []
            back = eng.rollback()
            assert [r.status for r in back.results] == [RESTORED], back.results
        if original is None:
            assert not path.exists()  # agentlatd created it: removed again
        else:
            assert path.read_bytes() == original.encode()


def test_restore_leaves_a_ban_another_writer_changed(tmp_path: pathlib.Path) -> None:
    t = tree(tmp_path / "t", FEDORA_SYSCONFIG)
    path = t / "etc/default/irqbalance"
    with Engine(Root(str(t)), str(tmp_path / "state")) as eng:
        eng.apply([Change.parse(ie.NAME, TARGET, "", "2-3,7", "t")])
        theirs = path.read_text().replace("IRQBALANCE_BANNED_CPULIST=2-3,7",
                                          "IRQBALANCE_BANNED_CPULIST=1-3,7").replace(
                                              "IRQBALANCE_BANNED_CPUS=8c", "IRQBALANCE_BANNED_CPUS=8e")
        path.write_text(theirs)
        # the mask wins in irqbalance (setup_banned_cpus()): the list alone is no change
        (d,) = eng.check_drift()  # drift is said (and yielded: policy.daemon.drift)
        assert d.action == "yielded"
    t = tree(tmp_path / "t2", FEDORA_SYSCONFIG)
    path = t / "etc/default/irqbalance"
    with Engine(Root(str(t)), str(tmp_path / "state2")) as eng:
        eng.apply([Change.parse(ie.NAME, TARGET, "", "2-3,7", "t")])
        theirs = path.read_text().replace("IRQBALANCE_BANNED_CPULIST=2-3,7",
                                          "IRQBALANCE_BANNED_CPULIST=1-3,7").replace(
                                              "IRQBALANCE_BANNED_CPUS=8c", "IRQBALANCE_BANNED_CPUS=8e")
        path.write_text(theirs)
        back = eng.rollback()
        assert [r.status for r in back.results] == [FAILED]
        assert "another writer" in back.results[0].message
    assert path.read_text() == theirs  # never overwritten


def test_knob_restarts_the_unit_only_on_the_live_host_and_only_after_the_edit(
        tmp_path: pathlib.Path) -> None:
    restarts = Restarts()
    k = ie.IrqbalanceEnvKnob(restart=restarts)
    t = tree(tmp_path / "t", FEDORA_SYSCONFIG)
    k.write(Root(str(t)), TARGET, "2-3")
    assert restarts.units == []  # a recorded tree: nothing runs there
    assert k.equal(k.read(Root(str(t)), TARGET), "2-3")
    with pytest.raises(ValueError):
        k.write(Root(str(t)), TARGET, "IRQBALANCE_BANNED_CPULIST=1")
    with pytest.raises(ValueError):
        k.check_target("/usr/lib/irqbalance/defaults.env")


def test_unit_lookup_refuses_an_irqbalance_outside_systemd(tmp_path: pathlib.Path) -> None:
    t = tree(tmp_path / "t", FEDORA_SYSCONFIG, cgroup="0::/user.slice/session-1.scope\n")

    class LiveTree(Root):
        """The tree answering as if it were the live root (for _unit() only)."""

        @property
        def is_host(self) -> bool:
            return True

    restarts = Restarts()
    k = ie.IrqbalanceEnvKnob(restart=restarts)
    with pytest.raises(KernelError) as ei:
        k.write(LiveTree(str(t)), TARGET, "2-3")
    assert "not a systemd service" in str(ei.value)
    assert (t / "etc/default/irqbalance").read_text() == FEDORA_SYSCONFIG  # not edited
    (t / "proc/4242/cgroup").write_text("0::/system.slice/irqbalance.service\n")
    k.write(LiveTree(str(t)), TARGET, "2-3")
    assert restarts.units == ["irqbalance.service"]


def test_kill_9_after_the_edit_then_rollback_restores_the_file(tmp_path: pathlib.Path) -> None:
    t = tree(tmp_path / "t", FEDORA_SYSCONFIG)
    state = tmp_path / "state"
    path = t / "etc/default/irqbalance"
    plan = plan_file(tmp_path / "plan.json", [Change.parse(ie.NAME, TARGET, "", "2-3,7", "t")])
    args = ["--root", str(t), "--state-dir", str(state)]
    p = cli(["apply", *args, "--plan", str(plan)], crash_after_writes=1)
    assert p.returncode == -signal.SIGKILL, (p.stdout, p.stderr)
    assert ie.env_ban(path.read_text()) == CpuSet({2, 3, 7})
    j = journal_read.read_json(str(state / "journal.json"))
    assert j is not None and j["complete"] is False
    (e,) = j["entries"]
    assert e["original"] == FEDORA_SYSCONFIG
    # rollback --print: a line a person can paste that writes the very bytes back
    lines = rollback_commands(Root(str(t)), str(state))
    (cmd,) = [ln for ln in lines if not ln.startswith("#")]
    argv = shlex.split(cmd.split(" > ")[0])
    assert argv[:2] == ["printf", "%s"] and argv[2] == FEDORA_SYSCONFIG
    assert cmd.split(" > ")[1].startswith("/etc/default/irqbalance && systemctl try-restart")
    p = cli(["rollback", *args])
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert path.read_bytes() == FEDORA_SYSCONFIG.encode()


# -- IRQs handed over: --banirq in IRQBALANCE_ARGS ------------------------------------
#
# irqbalance.c (Irqbalance/irqbalance@de0fe4a799c0bd62afcaf11b0ff5fc85f0b24c3e)
# parse_command_line(): lopts {"banirq", 1, NULL, 'i'}, getopt_long(argc, argv,
# "odfjVi:p:s:c:l:m:t:e:", ...), case 'i': strtoull(optarg) -> add_cl_banned_irq();
# misc/irqbalance.service (@64285577b465c4c5d8b5bbfa0120432e1d5ffd63) and Debian's
# unit: ExecStart=/usr/sbin/irqbalance [--foreground] $IRQBALANCE_ARGS.

ADMIN_ARGS = 'IRQBALANCE_ARGS="--hintpolicy=subset --banirq=9"\n'
OLD_UNIT = "[Service]\nEnvironmentFile=/etc/default/irqbalance\nExecStart=/usr/sbin/irqbalance\n"


def sh_env(path: pathlib.Path, name: str) -> str:
    """`name` as a POSIX shell that sources the file sees it (the init.d script's way)."""
    import subprocess
    p = subprocess.run(["sh", "-c", f'. "$0"; printf %s "${name}"', str(path)],
                       capture_output=True, text=True, check=True)
    return p.stdout


def test_banned_irqs_reads_irqbalance_getopt_forms_and_values_round_trip() -> None:
    assert ie.banned_irqs("--banirq=4 --banirq 5 -i6 -i 7 --bani=8 --banmod=x -t 5 -- -i9") == \
        (4, 5, 6, 7, 8)
    assert ie.banned_irqs("--ban=4 --foreground") == ()  # ambiguous (banirq/banmod): not ours
    for args in ("--hintpolicy=subset", 'a "b" $c `d` \\e', ""):
        line = ie.args_line(args, (40, 9))
        assert ie.parse_env(line)[ie.ARGS].split()[-2:] == ["--banirq=9", "--banirq=40"]
        assert ie.parse_env(line)[ie.ARGS].startswith(args)
    assert ie.args_line("--banirq=9", (9, 40)) == 'IRQBALANCE_ARGS="--banirq=9 --banirq=40"\n'
    assert ie.decode("'x'\"y\" # c") == "xy" and ie.decode("abc  # c") == "abc"


def test_regression_env_file_mode_hands_steered_irqs_over_with_banirq(
        tmp_path: pathlib.Path) -> None:
    # the bug pinned: in env-file mode the IRQs agentlatd steers were never banned
    # in irqbalance (no --banirq), so choose() said "unknown" and nothing was steered.
    # Now: the administrator's IRQBALANCE_ARGS are kept, --banirq=N appended for
    # each handed IRQ, the block read back as the same ban, and the file restored
    # byte for byte with a restart each way
    admin = FEDORA_SYSCONFIG.replace('IRQBALANCE_ARGS="--hintpolicy=subset"', ADMIN_ARGS.rstrip())
    t = tree(tmp_path / "t", admin)
    root = Root(str(t))
    ch = ie.choose(root, (4242,), ())
    assert ch == ie.Channel(TARGET, CpuSet({7}), (9,))  # the admin's own --banirq
    value = "2-3,7 banirq=9,40,41"
    restarts = Restarts()
    k = ie.IrqbalanceEnvKnob(restart=restarts)
    k.write(root, TARGET, value)
    path = t / "etc/default/irqbalance"
    text = path.read_text()
    assert text.startswith(admin + "\n")  # every byte of the admin's (no final newline)
    env = ie.parse_env(text)
    assert env[ie.ARGS] == "--hintpolicy=subset --banirq=9 --banirq=40 --banirq=41"
    assert sh_env(path, ie.ARGS) == env[ie.ARGS]  # a shell reads the same words
    assert k.equal(k.read(root, TARGET), value)
    assert not k.equal(k.read(root, TARGET), "2-3,7 banirq=9,40")  # an IRQ less: a change
    assert k.equal(k.read(root, TARGET), "2-3,7")  # a CPU-only ban ignores IRQs
    # written again with another IRQ set: one block, replaced
    k.write(root, TARGET, "2-3,7 banirq=9,42")
    again = path.read_text()
    assert again.count(ie.MARKER) == 1
    assert ie.parse_env(again)[ie.ARGS].endswith("--banirq=9 --banirq=42")
    note = k.restore(root, TARGET, admin, written="2-3,7 banirq=9,42", journaled=frozenset())
    assert note == "" and path.read_bytes() == admin.encode()
    assert restarts.units == []  # a recorded tree: nothing to restart
    # the ARGS the unit reads first (defaults.env) when the /etc file has none
    t2 = tree(tmp_path / "t2", FEDORA_SYSCONFIG.replace('IRQBALANCE_ARGS="--hintpolicy=subset"',
                                                        "#"))
    (t2 / "usr/lib/irqbalance").mkdir(parents=True)
    (t2 / "usr/lib/irqbalance/defaults.env").write_text("IRQBALANCE_ARGS='--banirq=3 -t 5'\n")
    r2 = Root(str(t2))
    assert ie.choose(r2, (4242,), ()).irqs == (3,)
    k.write(r2, TARGET, "2 banirq=3,40")
    assert ie.parse_env((t2 / "etc/default/irqbalance").read_text())[ie.ARGS] == \
        "--banirq=3 -t 5 --banirq=40"


def test_env_file_cannot_hand_irqs_over_when_the_unit_drops_irqbalance_args(
        tmp_path: pathlib.Path) -> None:
    # an ExecStart= without $IRQBALANCE_ARGS never passes --banirq: IRQs unknown
    # (None), so the planner leaves every IRQ to irqbalance rather than fight it
    t = tree(tmp_path / "t", ADMIN_ARGS)
    (t / "etc/systemd/system").mkdir(parents=True)
    (t / "etc/systemd/system/irqbalance.service").write_text(OLD_UNIT)
    assert ie.choose(Root(str(t)), (4242,), ()).irqs is None
    # not a systemd service at all: None too
    t2 = tree(tmp_path / "t2", ADMIN_ARGS, cgroup="0::/user.slice/session-1.scope\n")
    assert ie.choose(Root(str(t2)), (4242,), ()).irqs is None
    # a journaled env-file ban keeps telling the planner which IRQs are handed over
    t3 = tree(tmp_path / "t3", ADMIN_ARGS)
    assert ie.choose(Root(str(t3)), (4242,), [(ie.NAME, TARGET, ADMIN_ARGS)]).irqs == (9,)


def test_restore_guard_covers_the_irqbalance_args_line(tmp_path: pathlib.Path) -> None:
    ours = ie.with_ban(ADMIN_ARGS, CpuSet({2, 3}), (9, 40), "--hintpolicy=subset --banirq=9")
    written = ie.Ban(CpuSet({2, 3}), frozenset({9, 40}))
    assert ie.restored(ours, ADMIN_ARGS, written) == (ADMIN_ARGS, "")
    # another writer dropped agentlatd's --banirq=40: the ban is no longer agentlatd's
    dropped = ours.replace(" --banirq=40", "")
    with pytest.raises(ValueError, match="another writer"):
        ie.restored(dropped, ADMIN_ARGS, written)
    # or removed the ARGS line of the block
    base, got = ie.split_block(ours)
    assert base == ADMIN_ARGS and got is not None and ie.ARGS in got
    with pytest.raises(ValueError, match="another writer"):
        ie.restored(ours.replace(got[ie.ARGS], ""), ADMIN_ARGS, written)
    # a block written before IRQs were part of the value (three lines) still restores
    old = ie.with_ban(ADMIN_ARGS, CpuSet({2, 3}))
    assert ie.restored(old, ADMIN_ARGS, CpuSet({2, 3})) == (ADMIN_ARGS, "")


def test_engine_steers_only_irqs_the_env_file_hands_over(tmp_path: pathlib.Path) -> None:
    # under "cooperate" with irqbalance running the engine writes an irq.affinity
    # only for IRQs banned by this batch or the journal: the env-file change counts
    c = Change.parse(ie.NAME, TARGET, "", "2-3 banirq=9,40", "t")
    assert irqbalance.handed_over([c], ()) == frozenset({"9", "40"})
    assert irqbalance.handed_over([Change.parse(ie.NAME, TARGET, "", "2-3", "t")], ()) == frozenset()

    class E:
        knob = ie.NAME
        written: str | None = "2-3 banirq=41"
    assert irqbalance.handed_over((), [E()]) == frozenset({"41"})


def test_kill_9_after_the_banirq_edit_then_rollback_restores_the_file(
        tmp_path: pathlib.Path) -> None:
    admin = DEBIAN_DEFAULT + ADMIN_ARGS
    t = tree(tmp_path / "t", admin)
    state = tmp_path / "state"
    path = t / "etc/default/irqbalance"
    plan = plan_file(tmp_path / "plan.json",
                     [Change.parse(ie.NAME, TARGET, "", "2-3 banirq=9,40,41", "t")])
    args = ["--root", str(t), "--state-dir", str(state)]
    p = cli(["apply", *args, "--plan", str(plan)], crash_after_writes=1)
    assert p.returncode == -signal.SIGKILL, (p.stdout, p.stderr)
    edited = path.read_text()
    assert ie.parse_env(edited)[ie.ARGS] == "--hintpolicy=subset --banirq=9 --banirq=40 --banirq=41"
    j = journal_read.read_json(str(state / "journal.json"))
    assert j is not None and j["complete"] is False
    (e,) = j["entries"]
    assert e["original"] == admin and e["written"] == "2-3 banirq=9,40,41"
    lines = rollback_commands(Root(str(t)), str(state))
    (cmd,) = [ln for ln in lines if not ln.startswith("#")]
    assert shlex.split(cmd.split(" > ")[0])[2] == admin
    p = cli(["rollback", *args])
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert path.read_bytes() == admin.encode()
