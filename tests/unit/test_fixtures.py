"""The fixture machine trees agree with themselves the way a real host's /proc and /sys do.

Structural checks (every tree, the captured one included): /proc/interrupts has one count column
per online CPU, symlinks are relative and resolve inside the tree, every MSI vector a PCI function
lists is a /proc/interrupts row. Exact checks (hand-written trees, where nothing moved between two
reads): counts agree across /proc/interrupts, sys/kernel/irq/N/per_cpu_count and /proc/stat,
masks agree with lists, managed NVMe IRQ affinities equal the blk-mq hctx cpu_lists, and the
committed trees are exactly what tests/fixtures/make_machines.py writes.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from agentlatd.cpuset import CpuSet
from agentlatd.sample.interrupts import Interrupts, parse_interrupts

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"
GENERATOR = REPO / "tests" / "fixtures" / "make_machines.py"
# large hosts (256 and 128 CPUs): regenerating them takes 1-3 minutes, so the
# generator check for them runs with the slow tests
LARGE = ("epyc-2s256t-nvme", "arm64-kunpeng-128c")
HAND_WRITTEN = ("server-2s64t", "arm64-gicv3", "cloud-vm-small", "gve-smt-offline", *LARGE)
ONE_COLUMN = {"ERR", "MIS", "Err"}
NVME_IO_QUEUE = re.compile(r"^(nvme\d+)q([1-9]\d*)$")


def trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc").is_dir())


def hand_written() -> list[pathlib.Path]:
    return [MACHINES / i for i in HAND_WRITTEN]


def read(tree: pathlib.Path, rel: str) -> str:
    return (tree / rel).read_text()


def cpus_of(tree: pathlib.Path, name: str) -> CpuSet:
    return CpuSet.parse_list(read(tree, f"sys/devices/system/cpu/{name}"))


def interrupts(tree: pathlib.Path) -> Interrupts:
    return parse_interrupts(read(tree, "proc/interrupts"))


def nr_cpu_ids(tree: pathlib.Path) -> int:
    return max(cpus_of(tree, "possible")) + 1


def kernel_mask(cpus: CpuSet, nbits: int) -> str:
    """lib/vsprintf.c bitmap_string(): the first word only as wide as the bits need."""
    value = sum(1 << c for c in cpus)
    words = []
    width = ((nbits % 32 or 32) + 3) // 4
    for lo in range((nbits + 31) // 32 * 32 - 32, -32, -32):
        words.append(f"{(value >> lo) & 0xFFFFFFFF:0{width}x}")
        width = 8
    return ",".join(words)


def hctx_cpus(text: str) -> CpuSet:
    """blk-mq prints a hctx cpu_list as "0, 32"."""
    return CpuSet(int(t) for t in text.replace(",", " ").split())


def test_the_hand_written_trees_exist() -> None:
    for t in hand_written():
        assert (t / "proc" / "interrupts").is_file(), t
        assert (t / "README.md").is_file(), t
        assert (t / "capture.json").is_file(), t


# ---------------------------------------------------------------------------
# every tree
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_interrupt_columns_are_the_online_cpus(tree: pathlib.Path) -> None:
    it = interrupts(tree)
    assert CpuSet(it.cpus) == cpus_of(tree, "online")
    for row in it.rows:
        if row.key in ONE_COLUMN:
            assert len(row.counts) == 1, row
        else:
            assert len(row.counts) == len(it.cpus), row


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_symlinks_are_relative_and_stay_inside_the_tree(tree: pathlib.Path) -> None:
    base = os.path.realpath(tree)
    links = 0
    for d, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                continue
            links += 1
            target = os.readlink(p)
            assert not target.startswith("/"), f"{p} -> {target}: absolute"
            real = os.path.realpath(p)
            assert real.startswith(base + os.sep), f"{p} -> {target}: leaves the tree"
            if tree.name in HAND_WRITTEN:
                # a capture's empty link targets vanish in git unless they hold a file
                assert os.path.exists(real), f"{p} -> {target}: dangling"
    assert links > 0


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_every_msi_vector_is_an_interrupts_row(tree: pathlib.Path) -> None:
    rows = interrupts(tree).numbered()
    found = 0
    for msi_dir in tree.glob("sys/devices/**/msi_irqs"):
        for entry in msi_dir.iterdir():
            found += 1
            assert int(entry.name) in rows, f"{entry}: no /proc/interrupts row"
            assert entry.read_text().strip() in ("msi", "msix")
            bdf = msi_dir.parent.name
            chip = rows[int(entry.name)].chip
            if "-0000:" in chip:  # per-device MSI domains (6.2+) name the function in the chip
                assert chip.endswith(bdf), (entry, chip)
    assert found > 0


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_every_row_has_its_proc_irq_dir(tree: pathlib.Path) -> None:
    for irq in interrupts(tree).numbered():
        for f in ("smp_affinity", "smp_affinity_list", "node"):
            assert (tree / f"proc/irq/{irq}/{f}").is_file(), (irq, f)


# ---------------------------------------------------------------------------
# hand-written trees: exact agreement
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("tree", hand_written(), ids=lambda p: p.name)
def test_softirqs_and_stat_columns(tree: pathlib.Path) -> None:
    possible = cpus_of(tree, "possible")
    online = cpus_of(tree, "online")
    soft = read(tree, "proc/softirqs").splitlines()
    # fs/proc/softirqs.c prints every POSSIBLE cpu, online or not
    assert CpuSet(int(t[3:]) for t in soft[0].split()) == possible
    stat = read(tree, "proc/stat").splitlines()
    per_cpu = CpuSet(int(ln.split()[0][3:]) for ln in stat if re.match(r"cpu\d+ ", ln))
    assert per_cpu == online
    totals = [0] * 10
    for ln in soft[1:]:
        name, _, counts = ln.partition(":")
        assert len(counts.split()) == len(possible), name
    for i, ln in enumerate(soft[1:]):
        totals[i] = sum(int(v) for v in ln.partition(":")[2].split())
    (softirq_line,) = [ln for ln in stat if ln.startswith("softirq ")]
    fields = [int(v) for v in softirq_line.split()[1:]]
    assert fields[1:] == totals and fields[0] == sum(totals)


@pytest.mark.parametrize("tree", hand_written(), ids=lambda p: p.name)
def test_counts_agree_across_interrupts_sysfs_and_stat(tree: pathlib.Path) -> None:
    it = interrupts(tree)
    possible = sorted(cpus_of(tree, "possible"))
    stat = read(tree, "proc/stat").splitlines()
    (intr,) = [ln for ln in stat if ln.startswith("intr ")]
    per_irq = [int(v) for v in intr.split()[2:]]
    rows = it.numbered()
    for d in sorted((tree / "sys/kernel/irq").iterdir(), key=lambda p: int(p.name)):
        irq = int(d.name)
        counts = [int(v) for v in (d / "per_cpu_count").read_text().strip().split(",")]
        assert len(counts) == len(possible), irq
        assert per_irq[irq] == sum(counts), irq
        if irq in rows:
            by_cpu = dict(zip(possible, counts, strict=True))
            assert list(rows[irq].counts) == [by_cpu[c] for c in it.cpus], irq
            assert (d / "actions").read_text().strip() == ",".join(rows[irq].actions), irq
            assert (d / "chip_name").read_text().strip() == rows[irq].chip, irq
    for irq, row in rows.items():
        assert (tree / f"sys/kernel/irq/{irq}").is_dir(), irq
        assert per_irq[irq] >= row.total, irq  # offline cpus' counts live only in /proc/stat


@pytest.mark.parametrize("tree", hand_written(), ids=lambda p: p.name)
def test_masks_agree_with_lists(tree: pathlib.Path) -> None:
    nbits = nr_cpu_ids(tree)
    for d in (tree / "proc/irq").iterdir():
        if not d.is_dir():
            continue
        for mask, lst in (("smp_affinity", "smp_affinity_list"),
                          ("effective_affinity", "effective_affinity_list")):
            cpus = CpuSet.parse_list((d / lst).read_text())
            assert (d / mask).read_text().strip() == kernel_mask(cpus, nbits), (d, mask)
        CpuSet.parse_mask((d / "affinity_hint").read_text())
    for q in tree.glob("sys/class/net/*/queues/*/*_cpus"):
        text = q.read_text().strip()
        assert text == kernel_mask(CpuSet.parse_mask(text), nbits), q
    default = read(tree, "proc/irq/default_smp_affinity").strip()
    assert default == kernel_mask(cpus_of(tree, "possible"), nbits)


@pytest.mark.parametrize("tree", hand_written(), ids=lambda p: p.name)
def test_managed_nvme_affinity_is_the_hctx_cpu_list(tree: pathlib.Path) -> None:
    if not (tree / "sys/class/nvme").is_dir():
        pytest.skip(f"{tree.name} has no NVMe controller")
    rows = interrupts(tree).numbered()
    checked = 0
    for ctrl in sorted((tree / "sys/class/nvme").iterdir()):
        pci = ctrl / "device"
        vectors = {int(e.name) for e in (pci / "msi_irqs").iterdir()}
        queues: dict[int, int] = {}  # I/O queue number -> irq
        for irq in vectors:
            for action in rows[irq].actions:
                m = NVME_IO_QUEUE.match(action)
                if m and m.group(1) == ctrl.name:
                    queues[int(m.group(2))] = irq
        # nvme0n1, or with native multipath the path disk nvme0c0n1 (the head
        # lives under devices/virtual/nvme-subsystem, bio-based, no mq/)
        namespaces = [p for p in ctrl.iterdir() if p.name.startswith(ctrl.name + "n")
                      or re.fullmatch(r"nvme\d+c" + ctrl.name[4:] + r"n\d+", p.name)]
        assert namespaces, ctrl
        for ns in namespaces:
            hctx = {int(h.name): hctx_cpus((h / "cpu_list").read_text()) for h in (ns / "mq").iterdir()}
            assert sorted(hctx) == [k - 1 for k in sorted(queues)], ns
            for k, irq in queues.items():
                aff = CpuSet.parse_list(read(tree, f"proc/irq/{irq}/smp_affinity_list"))
                assert aff == hctx[k - 1], (ns, k, irq)
                checked += 1
        # the hctx cpu_lists cover every possible cpu exactly once
        union: list[int] = []
        for ns in namespaces[:1]:
            for h in (ns / "mq").iterdir():
                union += sorted(hctx_cpus((h / "cpu_list").read_text()))
        assert sorted(union) == sorted(cpus_of(tree, "possible")), ctrl
    assert checked > 0


@pytest.mark.parametrize("tree", hand_written(), ids=lambda p: p.name)
def test_topology_is_consistent(tree: pathlib.Path) -> None:
    online = cpus_of(tree, "online")
    possible = cpus_of(tree, "possible")
    assert online <= possible
    assert cpus_of(tree, "offline") == CpuSet(possible - online)
    cpu = tree / "sys/devices/system/cpu"
    for c in possible:
        topo = cpu / f"cpu{c}/topology"
        if c not in online:
            assert not topo.exists(), f"cpu{c} is offline: no topology/"
            assert (cpu / f"cpu{c}/online").read_text().strip() == "0"
            continue
        sib = CpuSet.parse_list((topo / "thread_siblings_list").read_text())
        assert c in sib and sib <= online
        for s in sib:
            other = CpuSet.parse_list((cpu / f"cpu{s}/topology/thread_siblings_list").read_text())
            assert other == sib, (c, s)
        llc = max((cpu / f"cpu{c}/cache").glob("index*"),
                  key=lambda p: int((p / "level").read_text()))
        assert c in CpuSet.parse_list((llc / "shared_cpu_list").read_text())
    seen: set[int] = set()
    for node in (tree / "sys/devices/system/node").glob("node[0-9]*"):
        cpus = CpuSet.parse_list((node / "cpulist").read_text())
        assert not (cpus & seen), node
        seen |= cpus
    assert online <= CpuSet(seen)


@pytest.mark.parametrize("tree", hand_written(), ids=lambda p: p.name)
def test_manifest_lists_the_tree(tree: pathlib.Path) -> None:
    manifest = json.loads(read(tree, "capture.json"))
    files: set[str] = set()
    links: dict[str, str] = {}
    for d, dirs, names in os.walk(tree):
        for name in dirs + names:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, tree)
            if os.path.islink(p):
                links[rel] = os.readlink(p)
            elif os.path.isfile(p) and rel not in ("README.md", "capture.json") and name != ".gitkeep":
                files.add(rel)
    assert set(manifest["files"]) == files
    assert manifest["symlinks"] == links
    for rel in manifest["unreadable"]:
        assert not (tree / rel).exists(), f"{rel} is listed unreadable but present"
        assert (tree / rel).parent.is_dir(), rel
    assert manifest["hand_written"] is True and manifest["machine"] == tree.name
    assert manifest["kernel"] == read(tree, "proc/sys/kernel/osrelease").strip()
    rows = interrupts(tree).numbered()
    for irq in manifest["expected"]["managed_irqs"]:
        assert NVME_IO_QUEUE.match(",".join(rows[irq].actions)), irq
    size = sum(os.path.getsize(tree / f) for f in files)
    assert size < 2_000_000, f"{tree.name}: {size} bytes"
    assert tree.name in read(tree, "README.md")


def test_committed_trees_are_the_generator_output() -> None:
    small = [i for i in HAND_WRITTEN if i not in LARGE]
    r = subprocess.run([sys.executable, str(GENERATOR), "--check", *small],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "regenerate with tests/fixtures/make_machines.py:\n" + r.stdout + r.stderr


@pytest.mark.slow
def test_committed_large_trees_are_the_generator_output() -> None:
    r = subprocess.run([sys.executable, str(GENERATOR), "--check", *LARGE],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, "regenerate with tests/fixtures/make_machines.py:\n" + r.stdout + r.stderr
