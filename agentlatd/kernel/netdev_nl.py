"""netdev generic netlink: command and attribute ids for NAPI and queues.

Defined by Documentation/netlink/specs/netdev.yaml and the header generated from
it, include/uapi/linux/netdev.h; Documentation/networking/napi.rst explains the
knobs (defer-hard-irqs, gro-flush-timeout, irq-suspend-timeout, threaded).

Checked against:
  - include/uapi/linux/netdev.h of a tree with NETDEV_A_NAPI_THREADED (6.17+):
    NAPI attrs 1..8, commands 1..15 as below, enum netdev_napi_threaded {0, 1};
  - docs.kernel.org/6.8/networking/netlink_spec/netdev.html: queue-get and
    napi-get first appear in 6.8 (the family itself is 6.3+; 6.1 has none);
  - the running 6.18.44 kernel: CTRL_CMD_GETFAMILY "netdev" lists ops
    1, 5, 10, 11 (napi-get), 12, 13, 14 (napi-set), 15; CTRL_CMD_GETPOLICY of
    napi-set accepts attrs 2 id (u32), 5 defer-hard-irqs (u32, max 2^31-1),
    6 gro-flush-timeout and 7 irq-suspend-timeout (NLA_UINT: 4 or 8 bytes),
    8 threaded (u32, max 1); napi-get dump accepts 1 ifindex.
Versions below are when each item entered mainline (net-next series dates);
agentlatd does not trust them: it detects the ops (CTRL_CMD_GETFAMILY) and the
napi-set attributes (CTRL_CMD_GETPOLICY) of the kernel it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FAMILY_NAME = "netdev"  # NETDEV_FAMILY_NAME
FAMILY_VERSION = 1  # NETDEV_FAMILY_VERSION

# commands (one enum for requests and replies)
CMD_DEV_GET = 1
CMD_PAGE_POOL_GET = 5
CMD_QUEUE_GET = 10  # 6.8
CMD_NAPI_GET = 11  # 6.8
CMD_QSTATS_GET = 12
CMD_BIND_RX = 13
CMD_NAPI_SET = 14  # 6.13 ("Add support for per-NAPI config via netlink")
CMD_BIND_TX = 15

# enum netdev_napi_threaded (6.17+). 6.18's policy caps the attribute at 1.
NAPI_THREADED_DISABLED = 0
NAPI_THREADED_ENABLED = 1

# enum netdev_queue_type
QUEUE_TYPE_RX = 0
QUEUE_TYPE_TX = 1

Kind = Literal["u32", "uint"]  # uint = NLA_UINT: u32 or u64 on the wire


@dataclass(frozen=True, slots=True)
class NapiAttr:
    id: int
    name: str  # kernel enum name, also the pyroute2 nla name
    field: str  # NapiInfo field
    kind: Kind
    since: str
    settable: bool  # accepted by napi-set


def _n(id_: int, suffix: str, kind: Kind, since: str, settable: bool = False) -> NapiAttr:
    return NapiAttr(id_, "NETDEV_A_NAPI_" + suffix, suffix.lower(), kind, since, settable)


NAPI_ATTRS: tuple[NapiAttr, ...] = (
    _n(1, "IFINDEX", "u32", "6.8"),
    _n(2, "ID", "u32", "6.8"),  # napi-set's key
    _n(3, "IRQ", "u32", "6.8"),  # absent when the NAPI has no IRQ (veth, netdevsim)
    _n(4, "PID", "u32", "6.8"),  # absent unless threaded
    _n(5, "DEFER_HARD_IRQS", "u32", "6.13", settable=True),
    _n(6, "GRO_FLUSH_TIMEOUT", "uint", "6.13", settable=True),  # ns
    _n(7, "IRQ_SUSPEND_TIMEOUT", "uint", "6.13", settable=True),  # ns
    _n(8, "THREADED", "u32", "6.17", settable=True),
)
NAPI_BY_FIELD: dict[str, NapiAttr] = {a.field: a for a in NAPI_ATTRS}
NAPI_BY_ID: dict[int, NapiAttr] = {a.id: a for a in NAPI_ATTRS}
A_NAPI_IFINDEX = 1
A_NAPI_ID = 2

# queue attribute set (queue-get), used to tie an IRQ-less NAPI to the queue it serves
A_QUEUE_ID = 1  # u32
A_QUEUE_IFINDEX = 2  # u32
A_QUEUE_TYPE = 3  # u32, QUEUE_TYPE_*
A_QUEUE_NAPI_ID = 4  # u32
