"""Root is the IO boundary: paths stay inside the root, errors carry the kernel's errno."""

from __future__ import annotations

import errno
import os
import pathlib

import pytest

from agentlatd.errors import KernelError
from agentlatd.kernel.errnos import ErrClass, classify
from agentlatd.sysfs.root import Root


def test_read_and_glob(tmp_path: pathlib.Path) -> None:
    q = tmp_path / "sys/class/net/eth9/queues"
    for n in ("rx-0", "rx-1", "tx-0"):
        (q / n).mkdir(parents=True)
        (q / n / "rps_cpus").write_text("00000003\n")
    r = Root(str(tmp_path))
    assert r.glob("sys/class/net/*/queues/rx-*") == [
        "sys/class/net/eth9/queues/rx-0", "sys/class/net/eth9/queues/rx-1"]
    assert r.read_value("sys/class/net/eth9/queues/rx-1/rps_cpus") == "00000003"
    assert r.read_optional("sys/devices/system/cpu/isolated") == ""


def test_dotdot_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError):
        Root(str(tmp_path)).path("proc/../../etc/passwd")


def test_realpath_stays_relative_to_root(tmp_path: pathlib.Path) -> None:
    dev = tmp_path / "sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0"
    dev.mkdir(parents=True)
    (tmp_path / "sys/class/net").mkdir(parents=True)
    os.symlink("../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
               tmp_path / "sys/class/net/eth0")
    r = Root(str(tmp_path))
    assert r.realpath("sys/class/net/eth0") == "sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0"


def test_write_errors_carry_errno(tmp_path: pathlib.Path) -> None:
    r = Root(str(tmp_path))
    with pytest.raises(KernelError) as ei:
        r.write_value("proc/irq/99/smp_affinity_list", "1", context="irq")
    assert ei.value.errno == errno.ENOENT and ei.value.errclass is ErrClass.GONE
    with pytest.raises(KernelError) as ei2:
        r.read_text("proc/nothing")
    assert "proc/nothing" in str(ei2.value)


def test_write_once(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "proc/irq/5"
    p.mkdir(parents=True)
    (p / "smp_affinity_list").write_text("0-1\n")
    Root(str(tmp_path)).write_value("proc/irq/5/smp_affinity_list", "1")
    assert (p / "smp_affinity_list").read_text() == "1"


def test_write_to_dev_full_reports_enospc() -> None:
    # a real kernel file that fails every write: the errno must come from write()
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(KernelError) as ei:
        Root("/").write_value("dev/full", "x")
    assert ei.value.errno == errno.ENOSPC and ei.value.errclass is ErrClass.NO_SPACE


def test_errno_table() -> None:
    # EIO means "kernel-managed" only on IRQ affinity; elsewhere it is a plain I/O error
    assert classify(errno.EIO, "irq") is ErrClass.MANAGED
    assert classify(errno.EPERM, "irq") is ErrClass.MANAGED  # 6.12: mode 0444 + EPERM
    assert classify(errno.EIO, "sysfs") is ErrClass.IO
    assert classify(errno.EOPNOTSUPP, "netlink") is ErrClass.UNSUPPORTED
    assert classify(errno.EBUSY) is ErrClass.TRANSIENT
    assert classify(errno.ESRCH, "process") is ErrClass.GONE
    assert classify(12345) is ErrClass.IO
