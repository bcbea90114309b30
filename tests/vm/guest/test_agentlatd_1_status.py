"""`agentlatd status --json` on a real kernel: IRQs -> devices -> queues, and the managed flag.

Runs first in the tier (files run in name order): no agentlatd has written anything yet, and
`status` itself only reads, so every NVMe I/O queue it calls kernel-managed was recognised
BEFORE any write (no EPERM/EIO learned from a failed attempt). What agentlatd reports is
checked against the kernel read directly (guestlib), never against agentlatd's own parsers.
"""

from __future__ import annotations

import os
import re
from typing import Any

import guestlib as g
import pytest

pytestmark = pytest.mark.vm
NCPU = os.cpu_count() or 0
# each IRQ's effective_affinity_list as the kernel showed it just before `status` ran
EFFECTIVE_BEFORE: dict[int, str] = {}


@pytest.fixture(scope="module")
def status(agentlatd: g.Agentlatd, guest_nics: g.Nics) -> dict[str, Any]:
    before = {n: g.read_cpulist(n) for n in g.read_interrupts()}
    EFFECTIVE_BEFORE.update({n: g.read_cpulist(n, "effective_affinity_list") for n in before})
    ran = agentlatd.run("status", "--json", "--interval", "0.5")
    assert ran.rc == 0, ran
    doc = ran.json()
    assert isinstance(doc, dict)
    # status reads only: no affinity moved while it ran
    assert {n: g.read_cpulist(n) for n in before} == before
    print(f"uname -r: {os.uname().release}; agentlatd status took {ran.secs:.1f} s")
    return doc


def irqs_of(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {i["irq"]: i for i in status["irqs"]}


def device(status: dict[str, Any], name: str) -> dict[str, Any]:
    (d,) = [d for d in status["devices"] if d["name"] == name]
    return d


def test_status_reports_this_kernel_and_topology(status: dict[str, Any]) -> None:
    assert status["kernel"] == os.uname().release
    assert status["topology"]["online"] == f"0-{NCPU - 1}"
    assert [c["cpu"] for c in status["cpus"]] == list(range(NCPU))
    # two counter samples 0.5 s apart: every CPU has a heat value and an IRQ rate
    assert all(c["heat"] is not None and c["irq_rate"] is not None for c in status["cpus"])


def test_every_numbered_irq_is_reported_with_its_kernel_affinity(status: dict[str, Any]) -> None:
    rows = g.read_interrupts()
    got = irqs_of(status)
    assert sorted(got) == sorted(rows)
    for n, row in rows.items():
        i = got[n]
        assert i["name"].endswith(row.name), (i, row)
        assert g.parse_cpulist(i["smp_affinity"]) == g.parse_cpulist(g.read_cpulist(n)), i
        # the kernel may move an IRQ's effective CPU by itself, its mask unchanged (on
        # x86 a non-managed MSI IRQ's vector is reserved, then allocated when the IRQ
        # is started: the likely cause of virtio2-output.0 on CPU 1 in status and on
        # CPU 0 right after, seen once): status must show a value the kernel showed,
        # before it ran or after
        shown = g.parse_cpulist(i["effective_affinity"] or "")
        assert shown in (g.parse_cpulist(g.read_cpulist(n, "effective_affinity_list")),
                         g.parse_cpulist(EFFECTIVE_BEFORE[n])), i


def test_nvme_admin_and_io_queue_irqs_map_to_nvme0(status: dict[str, Any]) -> None:
    got = irqs_of(status)
    nvme = g.irqs_named(r"nvme0q\d+")
    assert len(nvme) == NCPU + 1
    for name, row in nvme.items():
        q = int(name[len("nvme0q"):])
        i = got[row.irq]
        assert i["device"] == "nvme0", i
        assert i["queue"] == ("admin" if q == 0 else f"q{q}"), i
    assert sorted(device(status, "nvme0")["irqs"]) == sorted(r.irq for r in nvme.values())
    assert device(status, "nvme0")["driver"] == "nvme"


def test_managed_nvme_io_queue_irqs_are_flagged_before_any_write(status: dict[str, Any]) -> None:
    got = irqs_of(status)
    admin = g.irqs_named(r"nvme0q0")["nvme0q0"]
    assert got[admin.irq]["managed"] is False, got[admin.irq]
    for name, row in g.irqs_named(r"nvme0q[1-9]\d*").items():
        i = got[row.irq]
        print(f"{name}: managed={i['managed']}: {i['managed_reason']}")
        assert i["managed"] is True, i
        assert "PCI_IRQ_AFFINITY" in i["managed_reason"], i
        mode = g.irq_path(row.irq, "smp_affinity").stat().st_mode & 0o777
        # 6.12 makes a managed IRQ's affinity files 0444 (6.1 leaves them 0644, EIO on write)
        assert ("read-only" in i["managed_reason"]) == (mode == 0o444), (mode, i)
    # no device IRQ but those is: every NIC IRQ stays steerable. Outside devices only an
    # IRQ whose affinity the kernel keeps to itself (0444: the x86 timer, IRQ 0) counts
    io = {r.irq for r in g.irqs_named(r"nvme0q[1-9]\d*").values()}
    for n, i in got.items():
        if i["managed"] and n not in io:
            assert i["device"] is None and "read-only" in i["managed_reason"], i
            assert g.irq_path(n, "smp_affinity").stat().st_mode & 0o222 == 0, i
    assert not [i for i in got.values() if i["device"] and i["managed"] and i["irq"] not in io]


def test_virtio_net_input_output_and_config_irqs_map_to_its_queues(
        status: dict[str, Any], guest_nics: g.Nics) -> None:
    got = irqs_of(status)
    v, ifname = guest_nics.virtio_dev, guest_nics.virtio
    want = {f"{v}-config": "config"}
    want |= {f"{v}-input.{q}": f"rx-{q}" for q in range(4)}
    want |= {f"{v}-output.{q}": f"tx-{q}" for q in range(4)}
    rows = g.irqs_named(rf"{v}-.*")
    assert sorted(rows) == sorted(want)
    for name, queue in want.items():
        i = got[rows[name].irq]
        assert (i["device"], i["queue"], i["managed"]) == (ifname, queue, False), i
    d = device(status, ifname)
    assert (d["kind"], d["driver"]) == ("net", "virtio_net")
    queues = {q["name"]: q["irqs"] for q in d["queues"]}
    for q in range(4):
        assert queues[f"rx-{q}"] == [rows[f"{v}-input.{q}"].irq], queues
        assert queues[f"tx-{q}"] == [rows[f"{v}-output.{q}"].irq], queues


@pytest.mark.parametrize("role,driver,nq", [("e1000e", "e1000e", 1), ("igb", "igb", 4)])
def test_intel_nic_rx_tx_and_other_irqs_map_to_their_queues(
        status: dict[str, Any], guest_nics: g.Nics, role: str, driver: str, nq: int) -> None:
    got = irqs_of(status)
    ifname = getattr(guest_nics, role)
    want = {ifname: "other"}
    want |= {f"{ifname}-rx-{q}": f"rx-{q}" for q in range(nq)}
    want |= {f"{ifname}-tx-{q}": f"tx-{q}" for q in range(nq)}
    rows = g.irqs_named(rf"{re.escape(ifname)}(-.*)?")
    assert sorted(rows) == sorted(want)
    for name, queue in want.items():
        i = got[rows[name].irq]
        assert (i["device"], i["queue"], i["managed"]) == (ifname, queue, False), i
    d = device(status, ifname)
    assert (d["kind"], d["driver"]) == ("net", driver)
    assert sorted(d["irqs"]) == sorted(r.irq for r in rows.values())
    queues = {q["name"]: q["irqs"] for q in d["queues"]}
    for q in range(nq):
        assert queues[f"rx-{q}"] == [rows[f"{ifname}-rx-{q}"].irq], queues
        assert queues[f"tx-{q}"] == [rows[f"{ifname}-tx-{q}"].irq], queues


def test_irqs_of_devices_without_a_nic_or_disk_belong_to_none(status: dict[str, Any]) -> None:
    # the guest's virtio-9p transports (virtioN-requests: the host root and the job dir)
    # are virtio devices too; their IRQs must not be pinned on a NIC
    got = irqs_of(status)
    p9 = g.irqs_named(r"virtio\d+-requests")
    assert p9, "no virtio-9p IRQs in the guest?"
    for name, row in p9.items():
        assert got[row.irq]["device"] is None, (name, got[row.irq])


def test_netdevsim_port_is_a_device_with_queues_and_no_irqs(
        agentlatd: g.Agentlatd, agentlatd_lab: Any) -> None:
    # a second sample, now with the lab's netdevsim port up: no IRQs of its own
    ran = agentlatd.fork("status", "--json", "--interval", "0")
    assert ran.rc == 0, ran
    d = device(ran.json(), agentlatd_lab.nsim)  # type: ignore[arg-type]
    assert d["kind"] == "net" and d["driver"] == "netdevsim" and d["irqs"] == []
    assert sorted(q["name"] for q in d["queues"]) == [f"{k}-{q}" for k in ("rx", "tx")
                                                        for q in range(4)]
