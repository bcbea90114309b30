"""ethtool generic netlink: message and attribute ids for coalescing.

Defined by include/uapi/linux/ethtool_netlink.h (up to 6.16; from 6.17 the enums
live in the generated include/uapi/linux/ethtool_netlink_generated.h, values
unchanged), Documentation/netlink/specs/ethtool.yaml and
Documentation/networking/ethtool-netlink.rst ("COALESCE_GET", "COALESCE_SET").

Checked against:
  - linux-libc-dev 6.1.187 /usr/include/linux/ethtool_netlink.h on the dev host
    (ids 1..25; COALESCE_GET = 19, COALESCE_SET = 20, GET_REPLY = 20);
  - the running 6.18.44 kernel itself: CTRL_CMD_GETFAMILY lists ops 1..50 for
    "ethtool", and CTRL_CMD_GETPOLICY for op 20 (COALESCE_SET) gives attributes
    1..30 with 2-10, 13-23, 26-28 NLA_U32; 11-12 NLA_U8; 24-25 NLA_U8 max 1;
    1, 29, 30 nests (header; rx/tx DIM profiles);
  - attributes a later kernel adds (a net-next patch proposes 31 RX_CQE_FRAMES,
    32 RX_CQE_NSECS) are not listed until checked on a released kernel: a reply
    carrying them decodes with those attributes ignored.
Keys are ethtool(8) -C keywords (ethtool 6.1 `ethtool -h`; tx-aggr-* need
ethtool >= 6.2), so a Coalesce prints as the command a person would type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FAMILY_NAME = "ethtool"  # ETHTOOL_GENL_NAME
FAMILY_VERSION = 1  # ETHTOOL_GENL_VERSION

# enum ethtool_msg_user (userspace -> kernel)
MSG_COALESCE_GET = 19  # ETHTOOL_MSG_COALESCE_GET
MSG_COALESCE_SET = 20  # ETHTOOL_MSG_COALESCE_SET
# enum ethtool_msg_kernel (kernel -> userspace)
MSG_COALESCE_GET_REPLY = 20  # ETHTOOL_MSG_COALESCE_GET_REPLY
MSG_COALESCE_NTF = 21  # ETHTOOL_MSG_COALESCE_NTF

# request header nest (ETHTOOL_A_HEADER_*). The kernel parses it with
# nla_parse_nested() under strict validation: the nest attribute must carry
# NLA_F_NESTED or the request fails with EINVAL (net/ethtool/netlink.c
# ethnl_parse_header_dev_get; seen on 6.18, see tests/integration).
A_HEADER_DEV_INDEX = 1  # u32
A_HEADER_DEV_NAME = 2  # string
A_HEADER_FLAGS = 3  # u32, ETHTOOL_FLAG_*
A_HEADER_PHY_INDEX = 4  # u32, 6.12+; only for PHY-scoped messages, not coalesce

FLAG_COMPACT_BITSETS = 1 << 0
FLAG_OMIT_REPLY = 1 << 1
FLAG_STATS = 1 << 2

A_COALESCE_HEADER = 1  # nest, ETHTOOL_A_HEADER_*
# DIM profile nests (2024 "customized dim profile" series; present on 6.18):
# not modelled, a planner has no use for them, and they are never sent.
A_COALESCE_RX_PROFILE = 29
A_COALESCE_TX_PROFILE = 30

Kind = Literal["u32", "bool"]


@dataclass(frozen=True, slots=True)
class CoalesceAttr:
    """One scalar ETHTOOL_A_COALESCE_* attribute.

    id:    attribute id in the coalesce attribute set
    name:  the kernel enum name (also the pyroute2 nla name)
    field: Python field name (enum name, lower case, prefix dropped)
    key:   ethtool -C keyword
    kind:  "u32" (NLA_U32) or "bool" (NLA_U8 0/1, printed on/off)
    since: first kernel that has it in the netlink API
    """

    id: int
    name: str
    field: str
    key: str
    kind: Kind
    since: str


def _a(id_: int, suffix: str, key: str, kind: Kind = "u32", since: str = "5.6") -> CoalesceAttr:
    return CoalesceAttr(id_, "ETHTOOL_A_COALESCE_" + suffix, suffix.lower(), key, kind, since)


# In attribute-id order: the canonical string form follows this order.
COALESCE_ATTRS: tuple[CoalesceAttr, ...] = (
    _a(2, "RX_USECS", "rx-usecs"),
    _a(3, "RX_MAX_FRAMES", "rx-frames"),
    _a(4, "RX_USECS_IRQ", "rx-usecs-irq"),
    _a(5, "RX_MAX_FRAMES_IRQ", "rx-frames-irq"),
    _a(6, "TX_USECS", "tx-usecs"),
    _a(7, "TX_MAX_FRAMES", "tx-frames"),
    _a(8, "TX_USECS_IRQ", "tx-usecs-irq"),
    _a(9, "TX_MAX_FRAMES_IRQ", "tx-frames-irq"),
    _a(10, "STATS_BLOCK_USECS", "stats-block-usecs"),
    _a(11, "USE_ADAPTIVE_RX", "adaptive-rx", "bool"),
    _a(12, "USE_ADAPTIVE_TX", "adaptive-tx", "bool"),
    _a(13, "PKT_RATE_LOW", "pkt-rate-low"),
    _a(14, "RX_USECS_LOW", "rx-usecs-low"),
    _a(15, "RX_MAX_FRAMES_LOW", "rx-frames-low"),
    _a(16, "TX_USECS_LOW", "tx-usecs-low"),
    _a(17, "TX_MAX_FRAMES_LOW", "tx-frames-low"),
    _a(18, "PKT_RATE_HIGH", "pkt-rate-high"),
    _a(19, "RX_USECS_HIGH", "rx-usecs-high"),
    _a(20, "RX_MAX_FRAMES_HIGH", "rx-frames-high"),
    _a(21, "TX_USECS_HIGH", "tx-usecs-high"),
    _a(22, "TX_MAX_FRAMES_HIGH", "tx-frames-high"),
    _a(23, "RATE_SAMPLE_INTERVAL", "sample-interval"),
    _a(24, "USE_CQE_MODE_TX", "cqe-mode-tx", "bool", "5.15"),
    _a(25, "USE_CQE_MODE_RX", "cqe-mode-rx", "bool", "5.15"),
    _a(26, "TX_AGGR_MAX_BYTES", "tx-aggr-max-bytes", since="6.2"),
    _a(27, "TX_AGGR_MAX_FRAMES", "tx-aggr-max-frames", since="6.2"),
    _a(28, "TX_AGGR_TIME_USECS", "tx-aggr-time-usecs", since="6.2"),
)

BY_FIELD: dict[str, CoalesceAttr] = {a.field: a for a in COALESCE_ATTRS}
BY_KEY: dict[str, CoalesceAttr] = {a.key: a for a in COALESCE_ATTRS}
BY_ID: dict[int, CoalesceAttr] = {a.id: a for a in COALESCE_ATTRS}

U32_MAX = 0xFFFFFFFF
