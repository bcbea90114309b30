"""/proc/interrupts rows and smp_affinity_list semantics of real MSI-X devices."""

from __future__ import annotations

import errno
import os

import guestlib as g
import pytest

pytestmark = pytest.mark.vm
NCPU = os.cpu_count() or 0
ALL_CPUS = f"0-{NCPU - 1}"


def nvme_io_queues() -> dict[str, g.Irq]:
    return g.irqs_named(r"nvme0q[1-9]\d*")


def test_nvme_has_an_admin_irq_and_one_io_queue_irq_per_cpu() -> None:
    assert list(g.irqs_named(r"nvme0q0")) == ["nvme0q0"]
    assert sorted(nvme_io_queues()) == [f"nvme0q{q}" for q in range(1, NCPU + 1)]


def test_nvme_io_queue_irqs_are_spread_one_cpu_each() -> None:
    # blk-mq managed affinity: the kernel spreads I/O queue vectors over the CPUs
    cpus = sorted(g.read_cpulist(i.irq) for i in nvme_io_queues().values())
    assert cpus == [str(c) for c in range(NCPU)]


# Kernel-managed IRQs (IRQD_AFFINITY_MANAGED, e.g. blk-mq's NVMe I/O queues) refuse user
# affinity writes (kernel/irq/proc.c write_irq_affinity): EIO on 6.1; EPERM on 6.12, where
# their smp_affinity{,_list} files are also mode 0444 (root can still open them for
# writing, so the mode is a hint and the errno is the answer).  agentlatd must class both
# errnos as "managed: never retry".
MANAGED_ERRNO = errno.EPERM if g.kernel_at_least(6, 12) else errno.EIO


def test_nvme_io_queue_irq_affinity_write_is_refused_as_managed(steer_irq) -> None:
    for name, irq in nvme_io_queues().items():
        before = g.read_cpulist(irq.irq)
        other = str((int(before) + 1) % NCPU)
        with pytest.raises(OSError) as e:
            steer_irq(irq.irq, other)
        got = errno.errorcode.get(e.value.errno, e.value.errno)
        assert e.value.errno == MANAGED_ERRNO, f"{name}: {got}"
        assert g.read_cpulist(irq.irq) == before, name


def test_managed_irq_affinity_files_are_read_only_from_6_12() -> None:
    admin = g.irqs_named(r"nvme0q0")["nvme0q0"].irq
    assert g.irq_path(admin, "smp_affinity_list").stat().st_mode & 0o777 == 0o644
    for name, irq in nvme_io_queues().items():
        mode = g.irq_path(irq.irq, "smp_affinity_list").stat().st_mode & 0o777
        assert mode == (0o444 if g.kernel_at_least(6, 12) else 0o644), f"{name}: {oct(mode)}"


def test_nvme_admin_queue_irq_affinity_is_writable(steer_irq) -> None:
    admin = g.irqs_named(r"nvme0q0")["nvme0q0"]
    steer_irq(admin.irq, str(NCPU - 1))
    assert g.read_cpulist(admin.irq) == str(NCPU - 1)


def test_virtio_net_has_an_input_and_an_output_irq_per_queue(guest_nics: g.Nics) -> None:
    v = guest_nics.virtio_dev
    assert sorted(g.irqs_named(rf"{v}-input\.\d+")) == [f"{v}-input.{q}" for q in range(4)]
    assert sorted(g.irqs_named(rf"{v}-output\.\d+")) == [f"{v}-output.{q}" for q in range(4)]
    assert list(g.irqs_named(rf"{v}-config")) == [f"{v}-config"]


def test_virtio_input_irqs_default_to_one_cpu_each(guest_nics: g.Nics) -> None:
    # virtnet_set_affinity: input.Q gets the affinity hint (and affinity) of CPU Q
    v = guest_nics.virtio_dev
    for q in range(4):
        assert g.read_cpulist(g.irqs_named(rf"{v}-input\.{q}")[f"{v}-input.{q}"].irq) == str(q)


def test_e1000e_has_rx_tx_and_other_irqs(guest_nics: g.Nics) -> None:
    e = guest_nics.e1000e
    assert sorted(g.irqs_named(rf"{e}(-.*)?")) == sorted([e, f"{e}-rx-0", f"{e}-tx-0"])


def test_igb_has_other_and_4_rx_and_4_tx_irqs(guest_nics: g.Nics) -> None:
    i = guest_nics.igb
    want = [i] + [f"{i}-rx-{q}" for q in range(4)] + [f"{i}-tx-{q}" for q in range(4)]
    assert sorted(g.irqs_named(rf"{i}(-.*)?")) == sorted(want)


@pytest.mark.parametrize("role", ["virtio", "e1000e", "igb"])
def test_nic_irq_affinity_is_writable_and_reads_back(role, guest_nics: g.Nics, steer_irq) -> None:
    ifname = guest_nics.virtio_dev if role == "virtio" else getattr(guest_nics, role)
    irqs = g.irqs_named(rf"{ifname}-.*")
    assert irqs
    for irq in irqs.values():
        steer_irq(irq.irq, "1-2")
        assert g.read_cpulist(irq.irq) == "1-2", irq.name
