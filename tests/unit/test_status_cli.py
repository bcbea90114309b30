"""`agentlatd status`: JSON shape, 80 columns, heat, and eth0's IRQs on this host (read-only)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from agentlatd import cli
from agentlatd.commands import status as status_cmd
from agentlatd.cpuset import CpuSet
from agentlatd.sysfs.root import Root

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"
PCI_FN = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc").is_dir())


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc = cli.main(["status", *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def status_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    doc = json.loads(status(capsys, "--json", *argv))
    assert isinstance(doc, dict)
    return doc


def check_shape(doc: dict[str, object]) -> None:
    cpus, irqs, devices = doc["cpus"], doc["irqs"], doc["devices"]
    assert isinstance(cpus, list) and isinstance(irqs, list) and isinstance(devices, list)
    assert cpus
    for c in cpus:
        assert {"cpu", "core", "package", "node", "llc", "smt_siblings", "online", "heat"} <= set(c)
        assert isinstance(c["cpu"], int) and isinstance(c["online"], bool)
        CpuSet.parse_list(c["smt_siblings"])  # a cpulist string
        assert c["heat"] is None or isinstance(c["heat"], float | int)
    for i in irqs:
        assert {"irq", "name", "chip", "device", "queue", "total", "smp_affinity",
                "effective_affinity", "managed"} <= set(i)
        CpuSet.parse_list(i["smp_affinity"])
        if i["effective_affinity"] is not None:
            CpuSet.parse_list(i["effective_affinity"])
        assert isinstance(i["managed"], bool) and isinstance(i["total"], int)
    names = set()
    for d in devices:
        assert {"name", "kind", "driver", "pci", "numa_node", "irqs", "queues"} <= set(d)
        assert d["kind"] in ("net", "nvme", "block")
        names.add(d["name"])
        for q in d["queues"]:
            assert isinstance(q["name"], str) and isinstance(q["irqs"], list)
    for i in irqs:
        assert i["device"] is None or i["device"] in names


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_json_shape_on_every_fixture(tree: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = status_json(capsys, "--root", str(tree), "--interval", "0")
    check_shape(doc)
    assert all(c["heat"] is None for c in doc["cpus"])  # type: ignore[union-attr,index]


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_text_fits_80_columns(tree: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = status(capsys, "--root", str(tree), "--interval", "0")
    assert "CPUs" in text and "Devices" in text
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long


def test_fixture_status_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    tree = MACHINES / "server-2s64t"
    if not tree.is_dir():
        pytest.skip("no server fixture")
    before = {p: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in tree.rglob("*")}
    status(capsys, "--root", str(tree), "--interval", "0.05")
    after = {p: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in tree.rglob("*")}
    assert before == after


def test_this_host_fixture_queue_tree(capsys: pytest.CaptureFixture[str]) -> None:
    tree = MACHINES / "this-host"
    if not tree.is_dir():
        pytest.skip("no this-host fixture")
    doc = status_json(capsys, "--root", str(tree), "--interval", "0")
    eth0 = next(d for d in doc["devices"] if d["name"] == "eth0")  # type: ignore[union-attr,index]
    assert eth0["irqs"] == [37, 38, 39] and eth0["pci"] == "0000:00:03.0"
    queues = {q["name"]: q["irqs"] for q in eth0["queues"]}
    assert queues == {"rx-0": [38], "tx-0": [39], "config": [37]}


def _host_nic_with_msi() -> tuple[str, str, set[int]] | None:
    """(name, pci function, its MSI vectors) of eth0, else of the first PCI NIC; None if none."""
    root = Root("/")
    names = root.listdir("sys/class/net")
    for name in (["eth0"] if "eth0" in names else []) + names:
        if not root.exists(f"sys/class/net/{name}/device"):
            continue
        path = root.realpath(f"sys/class/net/{name}/device").split("/")
        while path and not PCI_FN.match(path[-1]):
            path.pop()
        if not path:
            continue
        fn = "/".join(path)
        msi = {int(v) for v in root.listdir(f"{fn}/msi_irqs") if v.isdigit()}
        if msi:
            return name, path[-1], msi
    return None


def test_live_host_maps_eth0_msi_irqs_to_eth0_and_its_queues(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`agentlatd status --json` on this host maps eth0's MSI IRQs."""
    found = _host_nic_with_msi()
    if found is None:
        pytest.skip("this host has no PCI NIC with MSI vectors")
    name, pci, msi = found
    doc = status_json(capsys, "--interval", "0.2")
    check_shape(doc)
    dev = next(d for d in doc["devices"] if d["name"] == name)  # type: ignore[union-attr,index]
    assert dev["kind"] == "net" and dev["pci"] == pci
    irqs = {i["irq"]: i for i in doc["irqs"]}  # type: ignore[union-attr,index]
    listed = msi & set(irqs)
    assert listed, "no MSI vector of the NIC is in /proc/interrupts"
    assert listed <= set(dev["irqs"])
    for n in listed:
        assert irqs[n]["device"] == name
        assert irqs[n]["queue"] in ("config", "other") or re.match(
            r"^(rx|tx|txrx|comp)-\d+$", irqs[n]["queue"]), irqs[n]
    # every rx/tx queue IRQ hangs under a queue of the device
    in_queues = {n for q in dev["queues"] for n in q["irqs"]}
    assert listed <= in_queues
    # this VM: virtio_net on virtio2 at 0000:00:03.0 (see tests/fixtures/machines/this-host)
    if pci == "0000:00:03.0" and dev["driver"] == "virtio_net":
        by_name = {irqs[n]["name"]: irqs[n]["queue"] for n in listed}
        assert by_name == {"virtio2-config": "config", "virtio2-input.0": "rx-0",
                           "virtio2-output.0": "tx-0"}
    # heat was measured over the interval for the online CPUs
    assert doc["interval_s"] and doc["interval_s"] > 0  # type: ignore[operator]
    assert any(c["heat"] is not None for c in doc["cpus"])  # type: ignore[union-attr,index]


def test_live_host_text(capsys: pytest.CaptureFixture[str]) -> None:
    text = status(capsys, "--interval", "0.1")
    assert "heat" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_bad_arguments_are_sentences(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--root", str(tmp_path), "--interval", "0"]) == 1
    assert "no proc/interrupts" in capsys.readouterr().err
    assert cli.main(["status", "--interval", "-1"]) == 1
    assert "--interval" in capsys.readouterr().err


def test_console_entry_point_runs_status() -> None:
    tree = MACHINES / "cloud-vm-small"
    if not tree.is_dir():
        pytest.skip("no cloud-vm fixture")
    p = subprocess.run([sys.executable, "-m", "agentlatd", "status", "--root", str(tree),
                        "--interval", "0", "--json"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["kernel"].startswith("6.8")


def test_the_daemon_view_says_when_forks_are_only_listed() -> None:
    """Without process events an agent's exit restores only the forks a tick listed:
    the view says so, with the reason; with events it says nothing."""
    base = {"pid": 1, "uptime_s": 5, "tick": 2, "version": "x", "policy": "p"}
    listed = status_cmd.render_daemon({**base, "forks": {"source": "listing",
                                                      "unavailable": "no answer"}}, "")
    assert "forked processes: listed by the agent tick, no process events (no answer)" \
        in listed
    assert "forked" not in status_cmd.render_daemon({**base, "forks": {"source": "events"}}, "")
    assert all(len(line) <= status_cmd.WIDTH for line in listed.splitlines())
