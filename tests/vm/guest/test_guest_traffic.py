"""Real RX traffic: IRQs fire on the CPU their affinity names (after the move is done)."""

from __future__ import annotations

import os
import pathlib

import guestlib as g
import pytest

pytestmark = pytest.mark.vm
CPUS = list(range(os.cpu_count() or 0))


def deltas(before: dict[int, g.Irq], after: dict[int, g.Irq], irq: int) -> list[int]:
    return [a - b for a, b in zip(after[irq].counts, before[irq].counts, strict=True)]


def test_udp_echo_and_ping_from_every_cpu(guest_nics: g.Nics) -> None:
    assert g.udp_echo_from_cpus(CPUS, n=20) == {c: 20 for c in CPUS}
    assert g.ping_from_cpus(CPUS, g.TAP_PEER, count=3) == {c: 3 for c in CPUS}


def test_virtio_input_irqs_fire_on_the_cpu_their_affinity_names(guest_nics: g.Nics, steer_irq) -> None:
    v = guest_nics.virtio_dev
    inputs = {q: g.irqs_named(rf"{v}-input\.{q}")[f"{v}-input.{q}"].irq for q in range(4)}
    target = {q: (q + 1) % len(CPUS) for q in inputs}  # every queue away from its default
    for q, irq in inputs.items():
        steer_irq(irq, str(target[q]))
        assert g.read_cpulist(irq) == str(target[q])
    # Without interrupt remapping the MSI message is rewritten at the next interrupt (on the
    # old CPU): make one per queue first, then effective_affinity_list has followed.
    g.udp_echo_from_cpus(CPUS, n=3)
    for q, irq in inputs.items():
        assert g.read_cpulist(irq, "effective_affinity_list") == str(target[q]), f"input.{q}"
    before = g.read_interrupts()
    # a flow sent from CPU c leaves on TX queue c (XPS) and tun answers on RX queue c
    assert g.udp_echo_from_cpus(CPUS, n=30) == {c: 30 for c in CPUS}
    after = g.read_interrupts()
    for q, irq in inputs.items():
        d = deltas(before, after, irq)
        print(f"{v}-input.{q} -> CPU {target[q]}: per-CPU interrupts {d}")
        assert d[target[q]] > 0, f"input.{q}: no interrupt on CPU {target[q]}: {d}"
        assert sum(d) == d[target[q]], f"input.{q}: interrupts off CPU {target[q]}: {d}"


def test_e1000e_rx_irq_fires_on_the_cpu_its_affinity_names(guest_nics: g.Nics, steer_irq) -> None:
    e = guest_nics.e1000e
    rx = g.irqs_named(rf"{e}-rx-0")[f"{e}-rx-0"].irq
    cpu = CPUS[-1]
    steer_irq(rx, str(cpu))
    gw = g.SLIRP["e1000e"][1]
    assert g.ping_from_cpus([0], gw, count=2) == {0: 2}
    assert g.read_cpulist(rx, "effective_affinity_list") == str(cpu)
    before = g.read_interrupts()
    assert g.ping_from_cpus([0], gw, count=5) == {0: 5}
    d = deltas(before, g.read_interrupts(), rx)
    print(f"{e}-rx-0 -> CPU {cpu}: per-CPU interrupts {d}")
    assert d[cpu] > 0 and sum(d) == d[cpu], d


def test_rps_and_xps_masks_are_writable_on_virtio_queues(guest_nics: g.Nics) -> None:
    qdir = pathlib.Path(f"/sys/class/net/{guest_nics.virtio}/queues")
    for leaf, glob in (("rps_cpus", "rx-*"), ("xps_cpus", "tx-*")):
        files = sorted(qdir.glob(f"{glob}/{leaf}"))
        assert len(files) == 4, files
        for f in files:
            old = f.read_text().strip()
            try:
                g.write_once(f, "6")
                assert int(f.read_text(), 16) == 6, f
            finally:
                g.write_once(f, old)
