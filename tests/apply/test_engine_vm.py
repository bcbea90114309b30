"""The engine against real MSI-X IRQs, managed NVMe queues and real coalescing: in the
throw-away QEMU guest of tests/vm (never on the host, whose IRQs carry the infrastructure).

Run (as root, from the repo; ~40 s with a warm lab):
    bash tests/apply/run_vm_engine.sh
It boots one guest with tests/vm/run_vm.sh and runs this file there; on the host
every test here is skipped (marker `vm`, deselected by the default `-m 'not vm'`).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import sys

import pytest
from applyhelpers import cli, plan_file

from agentlatd.apply.engine import CHANGED, CLAMPED, MANAGED, UNCHANGED, Engine
from agentlatd.plan.changes import Change
from agentlatd.policy import loads
from agentlatd.sysfs.root import Root

GUESTLIB = pathlib.Path(__file__).resolve().parents[1] / "vm" / "guest"
sys.path.insert(0, str(GUESTLIB))
import guestlib as g  # noqa: E402

IN_GUEST = os.environ.get("AGENTLATD_VM_GUEST") == "1" and socket.gethostname() == "agentlatd-vm"
pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not IN_GUEST, reason="runs only in the QEMU guest: "
                                 "bash tests/apply/run_vm_engine.sh")]
NCPU = os.cpu_count() or 1
LAST = str(NCPU - 1)


@pytest.fixture(scope="module")
def nics() -> dict[str, str]:
    names = {role: g.ifname_by_mac(mac) for role, mac in g.MACS.items()}
    assert all(names.values()), names
    out = {k: v for k, v in names.items() if v}
    for ifname in out.values():
        g.run("ip", "link", "set", ifname, "up")
        g.wait_for(lambda i=ifname: pathlib.Path(f"/sys/class/net/{i}/operstate")
                   .read_text().strip() in ("up", "unknown"), what=f"{ifname} up")
    return out


def irq_files(irqs: list[int]) -> dict[str, str]:
    out = {}
    for n in irqs:
        for leaf in ("smp_affinity_list", "smp_affinity"):
            out[f"{n}/{leaf}"] = g.irq_path(n, leaf).read_text()
    return out


def nic_irqs(nics: dict[str, str]) -> list[int]:
    v = g.virtio_dev_of(nics["virtio"])
    pats = [rf"{v}-(input|output)\.\d+", rf"{nics['e1000e']}(-.*)?", rf"{nics['igb']}(-.*)?"]
    return sorted(i.irq for p in pats for i in g.irqs_named(p).values())


def test_nic_irq_affinity_apply_and_rollback(tmp_path: pathlib.Path, nics: dict[str, str]) -> None:
    irqs = nic_irqs(nics)
    assert len(irqs) >= 8  # virtio-net input/output, plus e1000e and igb while up
    before = irq_files(irqs)
    plan = plan_file(tmp_path / "p.json", [Change("irq.affinity", str(n), "", LAST, "vm")
                                           for n in irqs])
    state = str(tmp_path / "st")
    p = cli(["apply", "--plan", str(plan), "--state-dir", state, "--json"])
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    print(json.dumps(rep["summary"]))
    for r in rep["results"]:
        # without interrupt remapping the vector moves at the IRQ's next interrupt:
        # an idle IRQ shows the old effective CPU and is reported, not hidden
        assert r["status"] in (CHANGED, CLAMPED, UNCHANGED), r
        if r["status"] == CLAMPED:
            assert r["after"].startswith(f"{LAST} (effective "), r
        if r["status"] != UNCHANGED:
            assert g.read_cpulist(int(r["target"])) == LAST
    p = cli(["rollback", "--print", "--state-dir", state])
    assert f"/proc/irq/{irqs[0]}/smp_affinity_list" in p.stdout
    p = cli(["rollback", "--state-dir", state])
    assert p.returncode == 0, p.stdout + p.stderr
    assert irq_files(irqs) == before


def test_managed_nvme_irqs_are_recorded_and_never_retried(tmp_path: pathlib.Path) -> None:
    io = sorted(i.irq for i in g.irqs_named(r"nvme0q[1-9]\d*").values())
    admin = g.irqs_named(r"nvme0q0")["nvme0q0"].irq
    assert io
    before = irq_files([*io, admin])
    changes = [Change("irq.affinity", str(n), "", LAST if n != io[-1] else "0", "vm") for n in io]
    changes.append(Change("irq.affinity", str(admin), "", LAST, "vm"))
    with Engine(Root("/"), str(tmp_path / "st")) as eng:
        rep = eng.apply(changes)
        st = {r.target: r for r in rep.results}
        for n in io:
            r = st[str(n)]
            if r.status == UNCHANGED:
                continue
            # EIO on 6.1, EPERM on 6.12 (0444 files): both are ErrClass.MANAGED
            assert r.status == MANAGED and r.errclass == "managed", r
            print(r.message)
        assert st[str(admin)].status in (CHANGED, CLAMPED)
        again = eng.apply(changes)
        for r in again.results:
            if r.target != str(admin) and r.status != UNCHANGED:
                assert r.status == MANAGED and "not retried" in r.message
        rb = eng.rollback()
    assert rb.ok, rb.to_json()
    assert irq_files([*io, admin]) == before


@pytest.mark.parametrize("mode", ["yield", "reassert"])
def test_drift_on_a_real_irq(tmp_path: pathlib.Path, nics: dict[str, str], mode: str) -> None:
    irq = nic_irqs(nics)[0]
    before = irq_files([irq])
    pol = loads(f'[daemon]\ndrift = "{mode}"\nirqbalance = "ignore"\n')
    with Engine(Root("/"), str(tmp_path / "st"), policy=pol) as eng:
        eng.apply([Change("irq.affinity", str(irq), "", LAST, "vm")])
        assert eng.check_drift() == []
        g.write_once(g.irq_path(irq, "smp_affinity_list"), "0\n")  # another writer
        (d,) = eng.check_drift()
        assert (d.expected, d.actual) == (LAST, "0")
        assert d.action == ("yielded" if mode == "yield" else "reasserted")
        assert g.read_cpulist(irq) == ("0" if mode == "yield" else LAST)
        rb = eng.rollback()
    assert rb.ok and irq_files([irq]) == before


def _coalesce_text(ifname: str) -> str:
    from agentlatd.netlink.ethtool import get_coalesce
    return str(get_coalesce(ifname))


@pytest.mark.parametrize("role,desired", [
    ("igb", "rx-usecs=20,tx-usecs=20"), ("e1000e", "rx-usecs=20"), ("virtio", "rx-usecs=20")])
def test_coalescing_apply_and_rollback(tmp_path: pathlib.Path, nics: dict[str, str],
                                       role: str, desired: str) -> None:
    ifname = nics[role]
    try:
        before = _coalesce_text(ifname)
    except Exception as e:  # virtio-net without coalescing: unsupported
        before = f"!{e}"
    plan = plan_file(tmp_path / "p.json", [Change("net.coalesce", ifname, "", desired, "vm")])
    state = str(tmp_path / "st")
    p = cli(["apply", "--plan", str(plan), "--state-dir", state, "--json"])
    rep = json.loads(p.stdout)
    (r,) = rep["results"]
    print(role, r["status"], r["before"], "->", r["after"], r["message"])
    if before.startswith("!"):
        assert r["status"] == "unsupported", r
        return
    assert r["status"] in (CHANGED, CLAMPED, "unsupported", "failed"), r
    p = cli(["rollback", "--state-dir", state])
    assert p.returncode == 0, p.stdout + p.stderr
    assert _coalesce_text(ifname) == before


def test_netdevsim_coalesce_threaded_and_napi(tmp_path: pathlib.Path) -> None:
    bus = pathlib.Path("/sys/bus/netdevsim")
    dev_id = 300
    g.write_once(bus / "new_device", f"{dev_id} 1 4")
    try:
        net = bus / "devices" / f"netdevsim{dev_id}" / "net"
        g.wait_for(lambda: net.is_dir() and any(net.iterdir()), what="netdevsim netdev")
        ifname = sorted(p.name for p in net.iterdir())[0]
        g.run("ip", "link", "set", ifname, "up")
        base = pathlib.Path(f"/sys/class/net/{ifname}")
        files = sorted(p for p in base.rglob("*") if p.is_file() and "statistics" not in p.parts)

        def snap() -> dict[str, str]:
            out = {}
            for f in files:
                try:
                    out[str(f)] = f.read_text()
                except OSError as e:
                    out[str(f)] = f"!{e.errno}"
            return out

        s0, c0 = snap(), _coalesce_text(ifname)
        changes = [Change("net.coalesce", ifname, "", "rx-usecs=20,tx-usecs=30,adaptive-rx=on", "vm"),
                   Change("net.rps_cpus", f"{ifname}/rx-1", "", "f", "vm"),
                   Change("net.xps_cpus", f"{ifname}/tx-2", "", "4", "vm"),
                   Change("net.threaded", ifname, "", "1", "vm"),
                   Change("napi.config", f"{ifname}/napi1", "", "defer-hard-irqs=2", "vm")]
        plan = plan_file(tmp_path / "p.json", changes)
        state = str(tmp_path / "st")
        p = cli(["apply", "--plan", str(plan), "--state-dir", state, "--json"])
        assert p.returncode == 0, p.stdout + p.stderr
        rep = json.loads(p.stdout)
        for r in rep["results"]:
            print(r["knob"], r["status"], r["before"], "->", r["after"] or r["desired"])
            assert r["status"] == CHANGED, r
        p = cli(["rollback", "--state-dir", state])
        assert p.returncode == 0, p.stdout + p.stderr
        assert snap() == s0
        assert _coalesce_text(ifname) == c0
    finally:
        g.write_errno(bus / "del_device", str(dev_id))


def test_crash_at_every_write_point_with_real_irqs(tmp_path: pathlib.Path,
                                                   nics: dict[str, str]) -> None:
    irqs = [n for n in nic_irqs(nics) if g.read_cpulist(n) != LAST][:4]
    assert len(irqs) == 4
    before = irq_files(irqs)
    plan = plan_file(tmp_path / "p.json", [Change("irq.affinity", str(n), "", LAST, "vm")
                                           for n in irqs])
    for n in range(len(irqs) + 1):
        state = str(tmp_path / f"st{n}")
        p = cli(["apply", "--plan", str(plan), "--state-dir", state],
                env={"AGENTLATD_TEST_CRASH_AFTER_WRITES": str(n)})
        assert p.returncode == -signal.SIGKILL, (n, p.stdout, p.stderr)
        changed = sum(g.read_cpulist(i) == LAST for i in irqs)
        assert changed == n, (n, changed)
        p = cli(["rollback", "--state-dir", state])
        assert p.returncode == 0, p.stdout + p.stderr
        assert irq_files(irqs) == before, n
