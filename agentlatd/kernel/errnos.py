"""The one errno table: what the kernel means by each errno at each knob.

style.md habit 7; irqbalance activate.c (EIO on smp_affinity = managed IRQ,
ENOSPC = vector space exhausted), psutil's wrap_exceptions (ESRCH/ENOENT on a
process = it is gone). OSError is translated once, at the IO boundary
(agentlatd.sysfs.root), into agentlatd.errors.KernelError carrying one ErrClass.
"""

from __future__ import annotations

import enum
import errno


class ErrClass(enum.StrEnum):
    """What the engine does about a failed write, by class, never by raw errno.

    A StrEnum: the value is what reports, status JSON and metric labels carry
    ("gone"), and a member compares equal to it.
    """

    MANAGED = "managed"  # kernel owns this IRQ's affinity: record, plan around, never retry
    NO_SPACE = "no_space"  # no vector room on the target CPUs: try a wider set or report
    TRANSIENT = "transient"  # try again on a later tick
    GONE = "gone"  # the object vanished between sample and write: rescan
    UNSUPPORTED = "unsupported"  # device/kernel lacks the feature: report once, not fatal
    INVALID = "invalid"  # value refused: a planning bug or a device limit; report
    DENIED = "denied"  # not permitted (no root, read-only fs, LSM): report, stop writing
    IO = "io"  # any other I/O error


# (errno, context) -> class. context is the knob family ("irq", "sysfs", "proc",
# "netlink", "process"); None is the default for every context.
_TABLE: dict[tuple[int, str | None], ErrClass] = {
    # kernel/irq/proc.c write_irq_affinity(): irq_can_set_affinity_usr() is false
    # for IRQD_AFFINITY_MANAGED (blk-mq/NVMe per-CPU queues) -> -EIO.
    (errno.EIO, "irq"): ErrClass.MANAGED,
    # 6.12 (seen in the VM tier, linux-image-6.12.95+deb12): managed IRQs' affinity
    # files are mode 0444 and a write by root fails with EPERM instead. The engine
    # only writes as root, so on "irq" EPERM means managed, not "not permitted".
    (errno.EPERM, "irq"): ErrClass.MANAGED,
    # kernel/irq/matrix.c: no free vector on any CPU of the requested mask.
    (errno.ENOSPC, None): ErrClass.NO_SPACE,
    (errno.EBUSY, None): ErrClass.TRANSIENT,
    (errno.EAGAIN, None): ErrClass.TRANSIENT,
    (errno.EINTR, None): ErrClass.TRANSIENT,
    (errno.ENOENT, None): ErrClass.GONE,
    (errno.ESRCH, None): ErrClass.GONE,
    (errno.ENODEV, None): ErrClass.GONE,
    (errno.ENXIO, None): ErrClass.GONE,
    # ethtool netlink answers EOPNOTSUPP when the driver has no ->set_coalesce
    # (veth, virtio-net on older kernels); sysfs answers it for unsupported
    # threaded NAPI (netdevsim on 6.1).
    (errno.EOPNOTSUPP, None): ErrClass.UNSUPPORTED,
    (errno.ENOTSUP, None): ErrClass.UNSUPPORTED,
    (errno.ENOSYS, None): ErrClass.UNSUPPORTED,
    (errno.EPROTONOSUPPORT, None): ErrClass.UNSUPPORTED,
    (errno.EINVAL, None): ErrClass.INVALID,
    (errno.ERANGE, None): ErrClass.INVALID,
    (errno.EOVERFLOW, None): ErrClass.INVALID,
    (errno.EPERM, None): ErrClass.DENIED,
    (errno.EACCES, None): ErrClass.DENIED,
    (errno.EROFS, None): ErrClass.DENIED,
    (errno.EIO, None): ErrClass.IO,
}


def classify(err: int, context: str | None = None) -> ErrClass:
    """Class of errno `err` at a knob of family `context`."""
    if (err, context) in _TABLE:
        return _TABLE[(err, context)]
    return _TABLE.get((err, None), ErrClass.IO)

