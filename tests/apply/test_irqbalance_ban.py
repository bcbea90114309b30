"""irqbalance.banned_cpus: the setup answer's parser (pure) and the knob's client
side against a peer that speaks irqbalance's socket protocol in a recorded tree.

The real irqbalance runs only in the VM guest (tests/vm/guest): it would move
this host's own IRQs. The peer here follows irqbalance.c sock_handle(): one
command per connection, "setup" answered with "SLEEP .. BANNED <mask>",
"settings cpus <list>|NULL" applied at the next pass (here: at once when the
test says so), and it checks SCM_CREDENTIALS (uid 0), as irqbalance does."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator

import pytest
from applyhelpers import small_tree

from agentlatd.apply import irqbalance_ban, irqbalance_env, journal_read, knobs
from agentlatd.apply.engine import CHANGED, CLAMPED, FAILED, SKIPPED, UNSUPPORTED, Engine
from agentlatd.apply.irqbalance_ban import IrqbalanceBanKnob, parse_setup
from agentlatd.cpuset import CpuSet
from agentlatd.errors import KernelError
from agentlatd.plan.changes import Change
from agentlatd.sysfs.root import Root


def test_parse_setup_real_answers() -> None:
    # irqbalance.c sock_handle(): "SLEEP %d " + per banned IRQ
    # "IRQ %d LOAD %lu DIFF %lu CLASS %d " + "BANNED %s" (cpumask_scnprintf)
    s = parse_setup("SLEEP 10 BANNED 00000000,0000000c")
    assert (s.sleep_s, s.banned_irqs, s.banned) == (10, (), CpuSet({2, 3}))
    s = parse_setup("SLEEP 10 IRQ 24 LOAD 0 DIFF 0 CLASS 3 IRQ 25 LOAD 12 DIFF 4 CLASS 5 "
                    "BANNED 00000000")
    assert s.banned_irqs == (24, 25) and s.banned == CpuSet()
    for bad in ("", "garbage", "SLEEP x BANNED 0", "SLEEP 10 BANNED zz"):
        with pytest.raises(ValueError):
            parse_setup(bad)


class Peer:
    """A process-less stand-in speaking irqbalance's socket protocol."""

    def __init__(self, path: str, env_ban: CpuSet) -> None:
        self.env_ban = env_ban
        self.ui: CpuSet | None = None
        self.banned = env_ban
        self.banned_irqs: list[int] = [] # cl_banned_irqs (--banirq, "settings ban irqs")
        self.commands: list[str] = []
        self.cond = threading.Condition()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.listen(4)
        self.stop = False
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def rescan(self) -> None:
        # cputree.c setup_banned_cpus(): a UI ban replaces the environment's
        self.banned = self.ui if self.ui is not None else self.env_ban

    def serve(self) -> None:
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                msg, anc, _, _ = c.recvmsg(16384, socket.CMSG_SPACE(12))
                uid = None
                for level, typ, data in anc:
                    if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                        uid = struct.unpack("iII", data[:12])[1]
                if uid != 0:
                    continue
                cmd = msg.decode()
                if cmd.startswith("setup"):
                    irqs = "".join(f"IRQ {n} LOAD 0 DIFF 0 CLASS 3 " for n in self.banned_irqs)
                    c.sendall(f"SLEEP 10 {irqs}BANNED {self.banned.to_mask()}".encode())
                elif cmd.startswith("settings ban irqs "):
                    rest = cmd[len("settings ban irqs "):]
                    # irqbalance.c: "NONE" empties the list, else a strtoul() loop
                    self.banned_irqs = [] if rest.startswith("NONE") else [
                        int(t) for t in rest.split()]
                elif cmd.startswith("settings cpus "):
                    tok = cmd[len("settings cpus "):].split()[0]
                    self.ui = None if tok.startswith("NULL") else CpuSet.parse_list(tok)
                with self.cond:
                    self.commands.append(cmd)
                    self.cond.notify_all()

    def wait_for(self, cmd: str) -> None:
        """Until the peer has handled `cmd` (the client does not wait for it)."""
        with self.cond:
            assert self.cond.wait_for(lambda: cmd in self.commands, timeout=10.0), self.commands

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@contextlib.contextmanager
def tree_with_peer(env_ban: CpuSet) -> Iterator[tuple[Root, Peer]]:
    # AF_UNIX paths are at most 107 bytes: a short directory of our own
    with tempfile.TemporaryDirectory(prefix="ib-", dir="/dev/shm") as d:
        base = pathlib.Path(d)
        (base / "proc/4242").mkdir(parents=True)
        (base / "proc/4242/comm").write_text("irqbalance\n")
        (base / "run/irqbalance").mkdir(parents=True)
        peer = Peer(str(base / "run/irqbalance/irqbalance4242.sock"), env_ban)
        try:
            yield Root(d), peer
        finally:
            peer.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="irqbalance answers root peers only")
def test_knob_bans_keeps_pending_until_rescan_and_restores() -> None:
    k = IrqbalanceBanKnob()
    with tree_with_peer(CpuSet({7})) as (root, peer):
        assert k.read(root, "irqbalance") == "7"
        k.write(root, "irqbalance", "2-3,7")
        peer.wait_for("settings cpus 2-3,7")
        assert peer.ui == CpuSet({2, 3, 7})
        # irqbalance applies it at its next pass; read() asks "setup" only of an
        # irqbalance not written to (a slow answer must never be abandoned)
        assert peer.banned == CpuSet({7})
        n = len(peer.commands)
        assert k.read(root, "irqbalance") == "2-3,7"
        assert len(peer.commands) == n  # no "setup" sent
        peer.rescan()
        assert peer.banned == CpuSet({2, 3, 7})
        k.write(root, "irqbalance", "")  # restore an empty original: the UI ban is cleared
        peer.wait_for("settings cpus NULL")
        assert peer.ui is None
        assert "settings cpus NULL" in k.shell("irqbalance", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="irqbalance answers root peers only")
def test_irq_ban_keeps_irqbalances_own_banirq_and_restores_it() -> None:
    cpus = IrqbalanceBanKnob()
    k = irqbalance_ban.IrqbalanceIrqsKnob(cpus)
    with tree_with_peer(CpuSet()) as (root, peer):
        peer.banned_irqs = [30]  # irqbalance --banirq=30
        assert k.read(root, "irqbalance") == "30"
        k.write(root, "irqbalance", "24 25 30")
        peer.wait_for("settings ban irqs 24 25 30")
        assert peer.banned_irqs == [24, 25, 30]
        n = len(peer.commands)
        assert k.equal(k.read(root, "irqbalance"), "30 25 24")
        assert len(peer.commands) == n  # what was written, no "setup" asked
        k.write(root, "irqbalance", "")  # an empty original: "NONE"
        peer.wait_for("settings ban irqs NONE")
        assert peer.banned_irqs == []
        assert "settings ban irqs 30" in k.shell("irqbalance", "30")
        # sock_handle() reads 500 bytes: a longer command would be cut mid-number
        with pytest.raises(ValueError, match="500 bytes"):
            k.write(root, "irqbalance", " ".join(str(n) for n in range(10000, 10100)))
        with pytest.raises(ValueError):
            irqbalance_ban.parse_irqs("0 24")  # its strtoul() loop ends at a 0


def test_knob_without_irqbalance_says_so(tmp_path: pathlib.Path) -> None:
    (tmp_path / "proc").mkdir()
    k = knobs.get(irqbalance_ban.NAME)
    with pytest.raises(KernelError) as ei:
        k.read(Root(str(tmp_path)), "irqbalance")
    assert ei.value.errclass.value == "gone"
    with pytest.raises(ValueError):
        k.check_target("irqbalance2")
    assert k.reassert


def test_engine_steers_under_cooperate_only_the_irqs_banned_in_irqbalance(
        tmp_path: pathlib.Path) -> None:
    # daemon.irqbalance = "cooperate" (the default) with irqbalance running: an
    # irq.affinity change is written only for an IRQ the same batch (or the
    # journal) bans in irqbalance; any other is skipped, so a stale plan cannot
    # start a fight. The ban here goes through the environment file, which a
    # recorded tree can hold (the socket ban acts on the live irqbalance only).
    tree = small_tree(tmp_path / "tree")
    (tree / "proc/4242").mkdir(parents=True)
    (tree / "proc/4242/comm").write_text("irqbalance\n")
    (tree / "etc/default").mkdir(parents=True)
    with Engine(Root(str(tree)), str(tmp_path / "state")) as eng:
        rep = eng.apply([Change.parse(irqbalance_env.NAME, "/etc/default/irqbalance", "",
                                      "2-3 banirq=41", "t"),
                         Change.parse("irq.affinity", "41", "", "1", "t"),
                         Change.parse("irq.affinity", "42", "", "1", "t")])
    st = {(r.knob, r.target): r.status for r in rep.results}
    assert st[(irqbalance_env.NAME, "/etc/default/irqbalance")] == CHANGED
    # written (the tree's effective_affinity_list does not follow: "clamped")
    assert st[("irq.affinity", "41")] in (CHANGED, CLAMPED)
    assert st[("irq.affinity", "42")] == SKIPPED
    assert (tree / "proc/irq/41/smp_affinity_list").read_text().strip() == "1"
    assert (tree / "proc/irq/42/smp_affinity_list").read_text().strip() == "0-3"


def test_regression_irq_steered_although_the_ban_handing_it_over_failed(
        tmp_path: pathlib.Path) -> None:
    # the bug pinned: the IRQs a batch hands over were taken from the changes it
    # was GIVEN, so an IRQ was steered even when its ban was never written (the
    # socket ban refused, the environment file unwritable): irqbalance, which
    # still owns the IRQ, moved it back, the fight "cooperate" exists to prevent.
    # Now an IRQ whose hand-over rests on this batch's ban waits for that ban.
    tree = small_tree(tmp_path / "tree")
    (tree / "proc/4242").mkdir(parents=True)
    (tree / "proc/4242/comm").write_text("irqbalance\n")
    with Engine(Root(str(tree)), str(tmp_path / "state")) as eng:
        # the socket ban acts on the live irqbalance only: refused on this tree
        rep = eng.apply([Change.parse(irqbalance_ban.IRQS_NAME, "irqbalance", "", "41", "t"),
                         Change.parse("irq.affinity", "41", "", "1", "t")])
        st = {(r.knob, r.target): r for r in rep.results}
        assert st[(irqbalance_ban.IRQS_NAME, "irqbalance")].status == UNSUPPORTED
        r41 = st[("irq.affinity", "41")]
        assert r41.status == SKIPPED and "was not written" in r41.message
        assert (tree / "proc/irq/41/smp_affinity_list").read_text().strip() == "0-3"
        # the environment file cannot be written (its directory is a file here)
        (tree / "etc").mkdir(exist_ok=True)
        (tree / "etc/default").write_text("")
        rep = eng.apply([Change.parse(irqbalance_env.NAME, "/etc/default/irqbalance", "",
                                "2-3 banirq=41", "t"),
                         Change.parse("irq.affinity", "41", "", "1", "t")])
        st = {(r.knob, r.target): r for r in rep.results}
        assert st[(irqbalance_env.NAME, "/etc/default/irqbalance")].status == FAILED
        assert st[("irq.affinity", "41")].status == SKIPPED
        assert (tree / "proc/irq/41/smp_affinity_list").read_text().strip() == "0-3"
    # nothing of IRQ 41 journaled: it was never written
    j = journal_read.read_json(str(tmp_path / "state" / "journal.json"))
    assert j is None or not [e for e in j["entries"] if e["knob"] == "irq.affinity"]


@pytest.mark.skipif(os.geteuid() != 0, reason="irqbalance answers root peers only")
def test_channel_over_the_socket_carries_irqbalances_own_bans() -> None:
    # the daemon plans from this: the CPUs and IRQs irqbalance bans without
    # agentlatd (its environment ban, its --banirq), read once over the socket;
    # once agentlatd banned CPUs, the IRQ original comes from the knob's cache,
    # not a "setup" that could wait out a rescan
    from agentlatd.apply import irqbalance_env
    with tree_with_peer(CpuSet({7})) as (root, peer):
        peer.banned_irqs = [30]
        ch = irqbalance_env.choose(root, (4242,), ())
        assert ch == irqbalance_env.Channel("", CpuSet({7}), (30,))
        k = knobs.get(irqbalance_ban.IRQS_NAME)
        assert k.read(root, "irqbalance") == "30"  # what the engine reads before writing
        knobs.get(irqbalance_ban.NAME).write(root, "irqbalance", "2-3,7")
        peer.wait_for("settings cpus 2-3,7")
        n = len(peer.commands)
        ch = irqbalance_env.choose(root, (4242,), [(irqbalance_ban.NAME, "irqbalance", "7")])
        assert ch == irqbalance_env.Channel("", CpuSet({7}), (30,))
        assert len(peer.commands) == n
        # both journaled: nothing asked at all
        ch = irqbalance_env.choose(root, (4242,), [(irqbalance_ban.NAME, "irqbalance", "7"),
                                                   (irqbalance_ban.IRQS_NAME, "irqbalance", "")])
        assert ch == irqbalance_env.Channel("", CpuSet({7}), ())
        assert len(peer.commands) == n
