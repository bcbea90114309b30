"""Devices -> queues -> IRQs and managed IRQs: model/devices.py + model/build.py.

Tmp trees built here (real sysfs layouts with relative symlinks) and every
fixture machine. Nothing touches the host except read-only scan_machine(/).
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

from agentlatd.cpuset import CpuSet
from agentlatd.model.devices import NameMatch, parse_action
from agentlatd.model.machine import Machine
from agentlatd.sysfs.root import Root
from agentlatd.tick import scan_machine

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"
LABEL = re.compile(r"^(rx-\d+|tx-\d+|txrx-\d+|comp-\d+|q\d+|admin|config|other)$")


def trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc").is_dir())


# ---------------------------------------------------------------------------
# action names seen in the field
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "want"), [
    ("mlx5_comp3@pci:0000:3b:00.0", NameMatch("pci", "0000:3b:00.0", "comp-3")),
    ("mlx5_async0@pci:0000:3b:00.0", NameMatch("pci", "0000:3b:00.0", "other")),
    ("gve-ntfy-blk3@pci:0000:00:04.0", NameMatch("pci", "0000:00:04.0", "comp-3")),
    ("gve-mgmnt@pci:0000:00:04.0", NameMatch("pci", "0000:00:04.0", "other")),
    ("eth0-TxRx-3", NameMatch("if", "eth0", "txrx-3")),
    ("iavf-eth0-TxRx-0", NameMatch("if", "iavf-eth0", "txrx-0")),
    ("eth0-Tx-Rx-2", NameMatch("if", "eth0", "txrx-2")),
    ("ens1f0-rx-2", NameMatch("if", "ens1f0", "rx-2")),
    ("ens1f0-tx-2", NameMatch("if", "ens1f0", "tx-2")),
    ("eth1-rx-0", NameMatch("if", "eth1", "rx-0")),
    ("eth1", NameMatch("if", "eth1", "other")),
    ("virtio2-input.0", NameMatch("virtio", "virtio2", "rx-0")),
    ("virtio2-output.11", NameMatch("virtio", "virtio2", "tx-11")),
    ("virtio2-config", NameMatch("virtio", "virtio2", "config")),
    ("virtio1-req.0", NameMatch("virtio", "virtio1", "q0")),
    ("virtio4-input", NameMatch("virtio", "virtio4", "other")),
    ("nvme0q0", NameMatch("nvme", "nvme0", "admin")),
    ("nvme0q3", NameMatch("nvme", "nvme0", "q3")),
    ("nvme12q17", NameMatch("nvme", "nvme12", "q17")),
    # Azure MANA (gdma_main.c): one IRQ per queue, then the hardware channel
    ("mana_q0@pci:7870:00:00.0", NameMatch("pci", "7870:00:00.0", "comp-0")),
    ("mana_q15@pci:7870:00:00.0", NameMatch("pci", "7870:00:00.0", "comp-15")),
    ("mana_hwc@pci:7870:00:00.0", NameMatch("pci", "7870:00:00.0", "other")),
    # gve's first upstream versions named notify blocks after the unregistered "eth%d"
    ("eth%d-ntfy-block.1", NameMatch("if", "eth%d", "comp-1")),
    ("eth%d-mgmnt", NameMatch("if", "eth%d-mgmnt", "other")),
    ("ena-mgmnt@pci:0000:00:05.0", NameMatch("pci", "0000:00:05.0", "other")),
    # HiSilicon Kunpeng hns3 (hns3_enet.c hns3_nic_init_irq, real names in wayca-irqdump's README)
    ("hns3-0000:7d:00.0-TxRx-0", NameMatch("pci", "0000:7d:00.0", "txrx-0")),
    ("hns3-0000:bd:00.0-TxRx-15", NameMatch("pci", "0000:bd:00.0", "txrx-15")),
    ("hns3-0000:7d:00.1-Rx-2", NameMatch("pci", "0000:7d:00.1", "rx-2")),
    ("hclge-misc-0000:7d:00.0", NameMatch("if", "hclge-misc-0000:7d:00.0", "other")),
])
def test_action_names(name: str, want: NameMatch) -> None:
    assert parse_action(name) == want


def test_pci_address_inside_a_name_is_the_last_resort() -> None:
    from agentlatd.model.devices import name_matches
    found = name_matches("iavf-0000:00:06.0:mbx")
    assert found[-1] == NameMatch("pci", "0000:00:06.0", "other")
    assert name_matches("ahci[0000:00:17.0]")[-1] == NameMatch("pci", "0000:00:17.0", "other")


# ---------------------------------------------------------------------------
# a tree builder: files, relative symlinks, /proc/interrupts, /proc/irq/N
# ---------------------------------------------------------------------------
class Tree:
    def __init__(self, base: pathlib.Path, ncpu: int = 4) -> None:
        self.base = base
        self.ncpu = ncpu
        self.rows: list[tuple[int, str, str]] = []
        cpus = f"0-{ncpu - 1}"
        self.file("sys/devices/system/cpu/possible", cpus)
        self.file("sys/devices/system/cpu/online", cpus)
        self.file("proc/sys/kernel/osrelease", "6.8.0-test")

    def file(self, rel: str, text: str) -> None:
        p = self.base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")

    def link(self, rel: str, target: str) -> None:
        p = self.base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
        real = (p.parent / target).resolve()
        real.mkdir(parents=True, exist_ok=True)

    def irq(self, n: int, name: str, affinity: str, chip: str = "PCI-MSIX-0000:00:03.0") -> None:
        self.rows.append((n, name, chip))
        self.file(f"proc/irq/{n}/smp_affinity_list", affinity)
        self.file(f"proc/irq/{n}/effective_affinity_list", str(min(CpuSet.parse_list(affinity))))
        self.file(f"proc/irq/{n}/node", "0")

    def pci(self, fn: str, msi: list[int], driver: str | None = None, node: int = -1,
            intx: int = 0) -> str:
        d = f"sys/devices/pci0000:00/{fn}"
        self.file(f"{d}/numa_node", str(node))
        self.file(f"{d}/irq", str(intx))
        for v in msi:
            self.file(f"{d}/msi_irqs/{v}", "msix")
        if driver:
            self.link(f"{d}/driver", f"../../../bus/pci/drivers/{driver}")
        return d

    def nic(self, name: str, devdir: str, ifindex: int, nq: int = 1) -> None:
        """sys/class/net/<name> -> ../../devices/.../net/<name>, whose device -> ../.. (devdir)."""
        real = f"{devdir}/net/{name}"
        self.link(f"sys/class/net/{name}", "../../" + real[len("sys/"):])
        os.symlink("../..", self.base / real / "device")
        self.file(f"{real}/ifindex", str(ifindex))
        for q in range(nq):
            self.file(f"{real}/queues/rx-{q}/rps_cpus", "0")
            self.file(f"{real}/queues/rx-{q}/rps_flow_cnt", "0")
            self.file(f"{real}/queues/tx-{q}/xps_cpus", "0")

    def done(self) -> Root:
        head = "      " + "".join(f"CPU{c:<7}" for c in range(self.ncpu))
        lines = [head]
        for n, name, chip in sorted(self.rows):
            counts = "".join(f"{10:>10} " for _ in range(self.ncpu))
            lines.append(f"{n:>4}: {counts} {chip}   0-edge      {name}")
        self.file("proc/interrupts", "\n".join(lines))
        return Root(str(self.base))


def test_virtio_nic_msi_list_is_one_directory_above_device(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    fn = t.pci("0000:00:03.0", [37, 38, 39], driver="virtio-pci")
    virtio = f"{fn}/virtio2"
    t.link(f"{virtio}/driver", "../../../../bus/virtio/drivers/virtio_net")
    t.nic("eth0", virtio, 2)
    t.irq(37, "virtio2-config", "0-3")
    t.irq(38, "virtio2-input.0", "1")
    t.irq(39, "virtio2-output.0", "1")
    t.irq(40, "virtio3-input.0", "0-3", chip="PCI-MSIX-0000:00:04.0")  # not eth0's
    m = scan_machine(t.done())
    eth0 = m.device("eth0")
    assert (eth0.kind, eth0.driver, eth0.pci, eth0.numa_node) == ("net", "virtio_net", "0000:00:03.0", None)
    assert eth0.irqs == (37, 38, 39)
    assert eth0.queues == ("rx-0", "tx-0")
    assert [(i.irq, i.device, i.queue) for i in m.irqs] == [
        (37, "eth0", "config"), (38, "eth0", "rx-0"), (39, "eth0", "tx-0"), (40, None, None)]
    assert not any(i.managed for i in m.irqs)


def test_name_decides_between_two_nics_and_msi_overrides_a_wrong_name(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    a = t.pci("0000:3b:00.0", [50, 51, 52], driver="iavf")
    b = t.pci("0000:3b:00.1", [60], driver="iavf")
    t.nic("eth0", a, 2, nq=2)
    t.nic("eth1", b, 3)
    t.irq(50, "iavf-0000:3b:00.0:mbx", "0-3")
    t.irq(51, "iavf-eth0-TxRx-0", "0-3")
    t.irq(52, "eth1-TxRx-1", "0-3")  # named after eth1 but eth0's function lists it
    t.irq(60, "iavf-eth1-TxRx-0", "0-3")
    m = scan_machine(t.done())
    got = {i.irq: (i.device, i.queue) for i in m.irqs}
    assert got == {50: ("eth0", "other"), 51: ("eth0", "txrx-0"), 52: ("eth0", "other"),
                   60: ("eth1", "txrx-0")}
    assert m.device("eth0").irqs == (50, 51, 52)


def test_names_alone_map_when_there_is_no_msi_list(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    fn = t.pci("0000:02:00.0", [], driver="igb", node=1, intx=11)
    t.nic("eth1", fn, 3, nq=2)
    t.irq(11, "eth1", "0-3", chip="IO-APIC")  # legacy INTx line of the function
    t.irq(70, "eth1-rx-0", "0", chip="PCI-MSI")
    t.irq(71, "eth1-tx-0", "1", chip="PCI-MSI")
    m = scan_machine(t.done())
    assert {i.irq: (i.device, i.queue) for i in m.irqs} == {
        11: ("eth1", "other"), 70: ("eth1", "rx-0"), 71: ("eth1", "tx-0")}
    assert m.device("eth1").numa_node == 1


def _nvme_tree(t: Tree, *, driver: str | None, cpu_lists: list[str]) -> None:
    fn = t.pci("0000:5e:00.0", list(range(42, 43 + len(cpu_lists))), driver=driver, node=0)
    ctrl = f"{fn}/nvme/nvme0"
    t.link("sys/class/nvme/nvme0", f"../../{ctrl[len('sys/'):]}")
    os.symlink("../..", t.base / ctrl / "device")
    t.file(f"{ctrl}/transport", "pcie")
    ns = f"{ctrl}/nvme0n1"
    t.link("sys/block/nvme0n1", f"../{ns[len('sys/'):]}")
    os.symlink("..", t.base / ns / "device")
    t.file(f"{ns}/queue/rq_affinity", "1")
    for h, cl in enumerate(cpu_lists):
        t.file(f"{ns}/mq/{h}/cpu_list", cl)
    t.irq(42, "nvme0q0", "0-3")
    for h, cl in enumerate(cpu_lists):
        t.irq(43 + h, f"nvme0q{h + 1}", cl.replace(" ", ""))


def test_nvme_io_queues_are_managed_admin_is_not(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    _nvme_tree(t, driver="nvme", cpu_lists=["0, 2", "1, 3"])
    m = scan_machine(t.done())
    nv = m.device("nvme0")
    assert (nv.kind, nv.driver, nv.pci, nv.numa_node) == ("nvme", "nvme", "0000:5e:00.0", 0)
    assert nv.irqs == (42, 43, 44) and nv.queues == ("admin", "q1", "q2")
    assert nv.block_devices == ("nvme0n1",)
    assert dict(nv.hw_queue_cpus) == {"0": CpuSet({0, 2}), "1": CpuSet({1, 3})}
    assert [(i.queue, i.managed) for i in m.irqs] == [("admin", False), ("q1", True), ("q2", True)]
    assert "nvme driver" in m.irq(43).managed_reason and "hctx 0" in m.irq(43).managed_reason
    disk = m.device("nvme0n1")
    assert disk.kind == "block" and disk.irqs == () and disk.rq_affinity == 1


def test_nvme_managed_by_layout_without_a_driver_link(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    _nvme_tree(t, driver=None, cpu_lists=["0", "1", "2", "3"])
    m = scan_machine(t.done())
    assert [i.managed for i in m.irqs] == [False, True, True, True, True]
    assert "per-CPU/per-group layout" in m.irq(44).managed_reason


def test_nvme_io_queue_whose_affinity_is_not_a_hctx_is_not_managed_without_driver(
        tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    _nvme_tree(t, driver=None, cpu_lists=["0", "1"])
    (tmp_path / "proc/irq/44/smp_affinity_list").write_text("0-3\n")  # someone spread it
    m = scan_machine(t.done())
    assert m.irq(43).managed and not m.irq(44).managed


def test_read_only_affinity_file_means_managed(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    fn = t.pci("0000:00:02.0", [35, 36], driver="virtio-pci")
    t.link(f"{fn}/virtio1/driver", "../../../../bus/virtio/drivers/virtio_blk")
    t.link("sys/block/vda", "../devices/pci0000:00/0000:00:02.0/virtio1/block/vda")
    os.symlink("../../../virtio1", tmp_path / fn / "virtio1/block/vda/device")
    t.file(f"{fn}/virtio1/block/vda/mq/0/cpu_list", "0, 1, 2, 3")
    t.irq(35, "virtio1-config", "0-3")
    t.irq(36, "virtio1-req.0", "0-3")
    t.file("proc/irq/36/smp_affinity", "f")
    os.chmod(tmp_path / "proc/irq/36/smp_affinity", 0o444)
    m = scan_machine(t.done())
    vda = m.device("vda")
    assert (vda.kind, vda.driver, vda.irqs) == ("block", "virtio_blk", (35, 36))
    assert not m.irq(35).managed
    assert m.irq(36).managed and "read-only" in m.irq(36).managed_reason
    assert m.irq(36).queue == "q0"


def test_capture_manifest_readonly_list_is_an_explicit_marker(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    t.irq(30, "foo", "0-3", chip="IO-APIC")
    t.irq(31, "bar", "0-3", chip="IO-APIC")
    (tmp_path / "capture.json").write_text(json.dumps({"readonly": ["proc/irq/31/smp_affinity"]}))
    m = scan_machine(t.done())
    assert not m.irq(30).managed
    assert m.irq(31).managed and "capture recorded" in m.irq(31).managed_reason


# ---------------------------------------------------------------------------
# every fixture machine
# ---------------------------------------------------------------------------
def _manifest(tree: pathlib.Path) -> dict[str, object]:
    p = tree / "capture.json"
    return json.loads(p.read_text()) if p.is_file() else {}


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_fixture_devices_are_consistent(tree: pathlib.Path) -> None:
    root = Root(str(tree))
    m = scan_machine(root)
    assert m == scan_machine(root), "same tree, same Machine"
    assert [i.irq for i in m.irqs] == sorted(i.irq for i in m.irqs)
    names = [d.name for d in m.devices]
    assert len(names) == len(set(names))
    for i in m.irqs:
        if i.device is None:
            assert i.queue is None
            continue
        d = m.device(i.device)
        assert i.irq in d.irqs
        assert i.queue is not None and LABEL.match(i.queue), i
    for d in m.devices:
        assert d.kind in ("net", "nvme", "block")
        for n in d.irqs:
            assert m.irq(n).device == d.name
        if d.virtual:
            assert d.irqs == () and d.pci is None
        # a PCI function's MSI vectors that appear in /proc/interrupts belong to its device
        if d.pci and d.kind in ("net", "nvme"):
            msi = {p.name for p in tree.glob(f"sys/devices/**/{d.pci}/msi_irqs/*")}
            rows = {i.irq for i in m.irqs}
            assert {int(v) for v in msi} & rows <= set(d.irqs), d.name


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_fixture_managed_irqs_match_the_answer_key(tree: pathlib.Path) -> None:
    man = _manifest(tree)
    expected = man.get("expected")
    want = expected.get("managed_irqs") if isinstance(expected, dict) else man.get("managed_irqs")
    if tree.name == "this-host":
        want = [36]  # virtio1-req.0 (see its README)
    if not isinstance(want, list):
        pytest.skip(f"{tree.name} has no answer key for managed IRQs")
    m = scan_machine(Root(str(tree)))
    assert sorted(i.irq for i in m.irqs if i.managed) == sorted(want)
    for i in m.irqs:
        assert bool(i.managed_reason) == i.managed


def _fix(name: str) -> Machine:
    p = MACHINES / name
    if not (p / "proc").is_dir():
        pytest.skip(f"fixture {name} not in this checkout")
    return scan_machine(Root(str(p)))


def test_server_mlx5_and_nvme() -> None:
    m = _fix("server-2s64t")
    nic = m.device("ens1f0")
    assert (nic.driver, nic.pci, nic.numa_node) == ("mlx5_core", "0000:3b:00.0", 0)
    assert nic.irqs == tuple(range(75, 92))
    assert m.irq(75).queue == "other" and m.irq(79).queue == "comp-3"
    nv = m.device("nvme0")
    assert nv.irqs == tuple(range(42, 75)) and m.irq(42).queue == "admin"
    assert m.irq(43).smp_affinity == CpuSet({0, 32})
    assert m.device("nvme0n1").rq_affinity == 1
    assert m.device("docker0").virtual and m.device("lo").virtual


def test_gve_and_iavf_names() -> None:
    m = _fix("gve-smt-offline")
    assert {i.irq: i.queue for i in m.irqs if i.device == "ens4"} == {
        **{24 + k: f"comp-{k}" for k in range(8)}, 32: "other"}
    assert {i.irq: i.queue for i in m.irqs if i.device == "eth0"} == {
        33: "other", **{34 + k: f"txrx-{k}" for k in range(4)}}


def test_cloud_vm_virtio_queues_and_rng_is_no_nic() -> None:
    m = _fix("cloud-vm-small")
    eth0 = m.device("eth0")
    assert eth0.driver == "virtio_net" and eth0.pci == "0000:00:04.0" and eth0.numa_node is None
    assert {m.irq(n).queue for n in eth0.irqs} == {"config", *(f"rx-{q}" for q in range(4)),
                                                   *(f"tx-{q}" for q in range(4))}
    rng = [i for i in m.irqs if i.name == "virtio0-input"]
    assert rng and rng[0].device is None


def test_this_host_fixture_maps_eth0() -> None:
    m = _fix("this-host")
    eth0 = m.device("eth0")
    assert (eth0.driver, eth0.pci, eth0.numa_node) == ("virtio_net", "0000:00:03.0", None)
    assert {i.irq: (i.name, i.queue) for i in m.irqs if i.device == "eth0"} == {
        37: ("virtio2-config", "config"), 38: ("virtio2-input.0", "rx-0"),
        39: ("virtio2-output.0", "tx-0")}
    assert all(m.device(n).virtual for n in ("lo", "ifb0", "ifb1"))
    others = {i.name: i.device for i in m.irqs if i.name.startswith(("virtio0", "virtio3", "virtio4"))}
    assert others and set(others.values()) == {None}


def test_live_host_builds_and_every_msi_vector_of_a_nic_maps_to_it() -> None:
    root = Root("/")
    m = scan_machine(root)
    assert m.topology.online and m.kernel_release == os.uname().release
    for d in m.devices:
        if d.kind != "net" or d.virtual:
            continue
        real = root.realpath(f"sys/class/net/{d.name}/device")
        fn = real
        while fn and not re.match(r".*/[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$", fn):
            fn = fn.rsplit("/", 1)[0] if "/" in fn else ""
        if not fn:
            continue
        rows = {i.irq for i in m.irqs}
        msi = {int(v) for v in root.listdir(f"{fn}/msi_irqs") if v.isdigit()} & rows
        assert msi <= set(d.irqs), d.name


# ---------------------------------------------------------------------------
# the big clouds' NICs, from the real samples in tests/fixtures/interrupts
# ---------------------------------------------------------------------------
SAMPLES = REPO / "tests" / "fixtures" / "interrupts"

# sample -> {irq: queue label} for every IRQ of a cloud NIC in it
CLOUD_NIC_QUEUES: dict[str, dict[int, str]] = {
    "azure-mana-hyperv": {25: "comp-0", 26: "comp-1", 27: "comp-2", 28: "comp-3"},
    "redpanda-azure-mana": {32: "other", 33: "comp-0", 34: "comp-1"},
    "redpanda-azure-mlx5": {33: "other", 34: "comp-0", 35: "comp-1"},
    "redpanda-gve": {168: "comp-0", 169: "comp-1", 170: "other"},
    "redpanda-gve-legacy": {26: "comp-0", 27: "comp-1", 58: "other"},
    "redpanda-virtio": {24: "config", 25: "rx-2", 26: "tx-2"},
    "aws-ena-r6in": {27: "other", 32: "other", 52: "other",
                     **{28 + q: f"txrx-{q}" for q in range(4)},
                     **{33 + q: f"txrx-{q}" for q in range(4)},
                     **{53 + q: f"txrx-{q}" for q in range(4)}},
}


@pytest.mark.parametrize("name", sorted(CLOUD_NIC_QUEUES))
def test_cloud_nic_queue_irqs_get_their_queue(name: str) -> None:
    from agentlatd.sample.interrupts import parse_interrupts
    text = (SAMPLES / f"{name}.txt").read_text().partition("--- /proc/interrupts ---\n")[2]
    rows = parse_interrupts(text).numbered()
    got: dict[int, str] = {}
    for irq in CLOUD_NIC_QUEUES[name]:
        m = parse_action(rows[irq].actions[0])
        assert m is not None, rows[irq]
        got[irq] = m.queue
    assert got == CLOUD_NIC_QUEUES[name]


def test_azure_mana_queue_irqs_on_the_hyperv_msi_chip(tmp_path: pathlib.Path) -> None:
    # Azure: the MANA function 7870:00:00.0 sits on a Hyper-V vPCI bus; its
    # IRQs are on the "Hyper-V PCIe MSI" chip (a chip name with spaces)
    t = Tree(tmp_path)
    fn = t.pci("7870:00:00.0", [24, 25, 26, 27, 28], driver="mana")
    t.nic("eth0", fn, 2, nq=4)
    t.irq(24, "mana_hwc@pci:7870:00:00.0", "0-3", chip="Hyper-V PCIe MSI")
    for q in range(4):
        t.irq(25 + q, f"mana_q{q}@pci:7870:00:00.0", str(q), chip="Hyper-V PCIe MSI")
    m = scan_machine(t.done())
    assert {i.irq: (i.device, i.queue) for i in m.irqs} == {
        24: ("eth0", "other"), 25: ("eth0", "comp-0"), 26: ("eth0", "comp-1"),
        27: ("eth0", "comp-2"), 28: ("eth0", "comp-3")}


def test_azure_mlx5_vf_queue_irqs_on_the_hyperv_msi_chip(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path, ncpu=2)
    fn = t.pci("4ea0:00:02.0", [33, 34, 35], driver="mlx5_core")
    t.nic("enP20128s1", fn, 3, nq=2)
    t.irq(33, "mlx5_async0@pci:4ea0:00:02.0", "0-1", chip="Hyper-V PCIe MSI")
    t.irq(34, "mlx5_comp0@pci:4ea0:00:02.0", "0", chip="Hyper-V PCIe MSI")
    t.irq(35, "mlx5_comp1@pci:4ea0:00:02.0", "1", chip="Hyper-V PCIe MSI")
    m = scan_machine(t.done())
    assert {i.irq: (i.device, i.queue) for i in m.irqs} == {
        33: ("enP20128s1", "other"), 34: ("enP20128s1", "comp-0"), 35: ("enP20128s1", "comp-1")}


def test_gve_legacy_eth_template_names_get_their_queue_from_the_msi_owner(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path, ncpu=2)
    fn = t.pci("0000:00:04.0", [26, 27, 58], driver="gve")
    t.nic("ens4", fn, 2, nq=1)
    t.irq(26, "eth%d-ntfy-block.0", "0", chip="ITS-MSI")
    t.irq(27, "eth%d-ntfy-block.1", "1", chip="ITS-MSI")
    t.irq(58, "eth%d-mgmnt", "0-1", chip="ITS-MSI")
    m = scan_machine(t.done())
    assert {i.irq: (i.device, i.queue) for i in m.irqs} == {
        26: ("ens4", "comp-0"), 27: ("ens4", "comp-1"), 58: ("ens4", "other")}


def test_renamed_nic_keeps_queue_labels_from_its_old_irq_names(tmp_path: pathlib.Path) -> None:
    # ixgbe/i40e/ena name IRQs at open time; a later rename (udev, ip link set
    # name) leaves the old name in /proc/interrupts: the MSI list gives the NIC
    t = Tree(tmp_path, ncpu=2)
    fn = t.pci("0000:00:05.0", [27, 28, 29], driver="ena")
    t.nic("ens5", fn, 2, nq=2)
    t.irq(27, "ena-mgmnt@pci:0000:00:05.0", "0")
    t.irq(28, "eth0-Tx-Rx-0", "0")
    t.irq(29, "eth0-Tx-Rx-1", "1")
    m = scan_machine(t.done())
    assert {i.irq: (i.device, i.queue) for i in m.irqs} == {
        27: ("ens5", "other"), 28: ("ens5", "txrx-0"), 29: ("ens5", "txrx-1")}


def test_name_of_another_pci_function_gives_no_queue(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path, ncpu=2)
    fn = t.pci("0000:3b:00.0", [40], driver="mlx5_core")
    t.nic("eth0", fn, 2)
    t.irq(40, "mlx5_comp3@pci:0000:3b:00.1", "0")  # 3b:00.1 is not a device here
    m = scan_machine(t.done())
    assert {i.irq: (i.device, i.queue) for i in m.irqs} == {40: ("eth0", "other")}
