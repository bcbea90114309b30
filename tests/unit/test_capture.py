"""`agentlatd capture`: whitelist, symlinks, manifest, and the round trip through --root.

The live host is only read: capture() reads / and writes under tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import stat

import pytest

from agentlatd import cli
from agentlatd.capture import (
    KEEP,
    MANIFEST,
    WHITELIST,
    CaptureError,
    expand_braces,
    patterns,
    write_capture,
)
from agentlatd.model.machine import Machine
from agentlatd.sysfs.root import Root
from agentlatd.tick import scan_machine

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"


def trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc").is_dir())


def tree_state(base: pathlib.Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(base)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in base.rglob("*")}


def stable(m: Machine) -> Machine:
    """The parts of a Machine that do not move between two reads of a live host."""
    irqs = tuple(dataclasses.replace(i, total=0, per_cpu={}) for i in m.irqs)
    return dataclasses.replace(m, irqs=irqs)


# ---------------------------------------------------------------------------
# the whitelist
# ---------------------------------------------------------------------------
def test_expand_braces() -> None:
    assert expand_braces("a/{b,c}/d") == ["a/b/d", "a/c/d"]
    assert expand_braces("x{1,{2,3}}") == ["x1", "x2", "x3"]
    assert expand_braces("plain") == ["plain"]
    with pytest.raises(ValueError):
        expand_braces("a/{b")


def test_whitelist_is_globs_under_proc_and_sys_only() -> None:
    assert isinstance(WHITELIST, tuple) and WHITELIST
    for p in patterns():
        assert p.startswith(("proc/", "sys/")), p
        assert ".." not in p.split("/") and "**" not in p and not p.startswith("/"), p
        # never a bare "sys/*"-style walk: at least 3 components
        assert p.count("/") >= 1 and not p.endswith("/*/*/*"), p


# ---------------------------------------------------------------------------
# tmp trees
# ---------------------------------------------------------------------------
def make_source(base: pathlib.Path) -> None:
    def f(rel: str, text: str) -> None:
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    dev = "sys/devices/pci0000:00/0000:00:03.0"
    f("proc/interrupts", "           CPU0\n 37:          5 PCI-MSIX-0000:00:03.0 0-edge virtio2-config\n")
    f("proc/sys/kernel/osrelease", "6.8.0-test\n")
    f("proc/irq/37/smp_affinity_list", "0\n")
    f("proc/irq/37/smp_affinity", "1\n")
    f("sys/devices/system/cpu/possible", "0\n")
    f("sys/devices/system/cpu/online", "0\n")
    f(f"{dev}/msi_irqs/37", "msix\n")
    f(f"{dev}/numa_node", "-1\n")
    f(f"{dev}/config", "binary config space: never captured\n")
    f(f"{dev}/virtio2/net/eth0/ifindex", "2\n")
    f(f"{dev}/virtio2/net/eth0/queues/rx-0/rps_cpus", "0\n")
    f("sys/kernel/secret", "not whitelisted\n")
    (base / "sys/bus/virtio/drivers/virtio_net").mkdir(parents=True)
    (base / "sys/class/net").mkdir(parents=True)
    os.symlink("../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0", base / "sys/class/net/eth0")
    os.symlink("../../../virtio2", base / f"{dev}/virtio2/net/eth0/device")
    os.symlink("../../../../bus/virtio/drivers/virtio_net", base / f"{dev}/virtio2/driver")
    # a whitelisted file that cannot be read: a dangling link
    os.symlink("../../../gone", base / f"{dev}/virtio2/net/eth0/queues/rx-0/rps_flow_cnt")
    os.chmod(base / "proc/irq/37/smp_affinity", 0o444)


def test_capture_tree(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    before = tree_state(src)
    out = tmp_path / "cap"
    man = write_capture(Root(str(src)), str(out), machine="t", now=0.0)
    assert tree_state(src) == before, "capture wrote into its source"

    files = man["files"]
    assert isinstance(files, list)
    assert "sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/ifindex" in files
    assert "sys/devices/pci0000:00/0000:00:03.0/msi_irqs/37" in files
    assert not any(f.endswith("/config") or "secret" in f for f in files)
    assert not (out / "sys/kernel/secret").exists()
    # links kept, relative, resolving inside the capture
    link = out / "sys/class/net/eth0"
    assert link.is_symlink()
    assert os.readlink(link) == "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0"
    assert (link / "ifindex").read_text() == "2\n"
    drv = out / "sys/devices/pci0000:00/0000:00:03.0/virtio2/driver"
    assert drv.is_symlink() and drv.resolve().is_dir() and (drv.resolve() / KEEP).exists()
    assert man["symlinks"] == {
        "sys/class/net/eth0": "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
        "sys/devices/pci0000:00/0000:00:03.0/virtio2/driver": "../../../../bus/virtio/drivers/virtio_net",
        "sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/device": "../../../virtio2",
    }
    # the unreadable file, with its errno
    bad = man["unreadable"]
    assert bad == {"sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/queues/rx-0/rps_flow_cnt":
                   "ENOENT"}
    # read-only knob file kept 0444 and listed
    assert man["readonly"] == ["proc/irq/37/smp_affinity"]
    assert stat.S_IMODE((out / "proc/irq/37/smp_affinity").stat().st_mode) == 0o444
    assert stat.S_IMODE((out / "proc/interrupts").stat().st_mode) == 0o644
    # the manifest on disk is the one returned
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk == man
    assert on_disk["kernel"] == "6.8.0-test" and on_disk["time"] == "1970-01-01T00:00:00Z"
    assert on_disk["machine"] == "t" and on_disk["format"] == 1
    # and it replays
    m = scan_machine(Root(str(out)))
    assert m.device("eth0").irqs == (37,) and m.irq(37).queue == "config"
    assert m.irq(37).managed  # the read-only smp_affinity


def test_capture_is_relocatable(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    write_capture(Root(str(src)), str(tmp_path / "a"))
    os.rename(tmp_path / "a", tmp_path / "b")
    m = scan_machine(Root(str(tmp_path / "b")))
    assert m.device("eth0").pci == "0000:00:03.0"


def test_capture_refuses_a_non_empty_directory(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    make_source(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CaptureError):
        write_capture(Root(str(src)), str(out))
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(CaptureError):
        write_capture(Root(str(src)), str(src / "inside"))


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_recapturing_a_fixture_gives_the_same_machine(tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    before = tree_state(tree)
    out = tmp_path / tree.name
    write_capture(Root(str(tree)), str(out))
    assert tree_state(tree) == before
    assert scan_machine(Root(str(out))) == scan_machine(Root(str(tree)))
    man = json.loads((out / MANIFEST).read_text())
    for link, target in man["symlinks"].items():
        p = out / link
        assert not target.startswith("/") and p.resolve().is_relative_to(out.resolve())
        assert p.resolve().exists(), link


def test_live_host_round_trip(tmp_path: pathlib.Path) -> None:
    """capture / -> scan_machine(capture) == scan_machine(/) for the stable parts."""
    out = tmp_path / "host"
    host_before = scan_machine(Root("/"))
    man = write_capture(Root("/"), str(out))
    host_after = scan_machine(Root("/"))
    cap = scan_machine(Root(str(out)))
    assert man["kernel"] == os.uname().release == cap.kernel_release
    assert cap.topology == host_after.topology
    # devices of the capture are the host's (a test elsewhere may add or drop
    # a veth in between: compare the ones present before and after)
    names = {d.name for d in host_before.devices} & {d.name for d in host_after.devices}
    assert names and names <= {d.name for d in cap.devices}
    for n in sorted(names):
        assert cap.device(n) == host_after.device(n), n
    assert stable(cap).irqs == stable(host_after).irqs
    # no host link leaves the capture
    for link, target in man["symlinks"].items():  # type: ignore[union-attr]
        assert not target.startswith("/")
        assert (out / link).resolve().is_relative_to(out.resolve()), link


def test_cli_capture_then_status(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert cli.main(["capture", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] > 0 and summary["replay"]["cpus"] >= 1
    assert cli.main(["status", "--root", str(out), "--interval", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kernel"] == os.uname().release
    # a second capture into the same directory is refused with a sentence
    assert cli.main(["capture", "--out", str(out)]) == 1
    assert "not an empty directory" in capsys.readouterr().err
