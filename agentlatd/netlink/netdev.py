"""netdev netlink NAPI: napi-get (dump/do), napi-set, queue-get.

Documentation/netlink/specs/netdev.yaml, Documentation/networking/napi.rst
("Per-NAPI configuration", "Threaded NAPI"); ids in agentlatd.kernel.netdev_nl;
net/core/netdev-genl.c is the kernel side. pyroute2 0.9.7 has no netdev family:
the messages below are built on its genlmsg/nla classes.

Feature detection, not version checks: the family appears in 6.3, napi-get in
6.8, napi-set in 6.13, the threaded attribute in 6.17 (see netdev_nl). Where
the family or op is missing every call raises NetlinkError with EOPNOTSUPP
(ErrClass.UNSUPPORTED): the caller falls back to the per-device sysfs files
(sys/class/net/DEV/napi_defer_hard_irqs, gro_flush_timeout, threaded). A
napi-set attribute this kernel's policy lacks is refused the same way before
anything is sent, so a request never half-applies.

Identity. A NAPI id is handed out anew when the driver re-adds its NAPIs (link
down/up, channel changes: napi.rst, "NAPI IDs"), so agentlatd keys a NAPI by
(ifindex, irq) (style.md habit 10). NAPIs without an IRQ (veth, netdevsim, some
virtual drivers) all have irq None; for them the key adds the lowest RX (else
TX) queue index the NAPI serves, from queue-get, which is stable while the
channel count is. That needs the driver to link queues to NAPIs
(netif_queue_set_napi()); veth does not on 6.18, so a multi-queue veth's NAPIs
cannot be told apart and find_napi() says so. NapiKey holds the three; find_napi() resolves one to the
NAPI's current id and refuses to guess when the key is ambiguous.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import genlmsg, nla_base_string

from agentlatd.kernel import netdev_nl as T
from agentlatd.netlink import Family, GenlSocket, NetlinkError, where

U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


class _uint(nla_base_string):  # type: ignore[misc]
    """NLA_UINT: u32 on the wire when the value fits, else u64 (include/net/netlink.h
    nla_put_uint(); the policy accepts either length)."""

    def encode(self) -> None:
        v = int(self["value"])
        self["value"] = v.to_bytes(4 if v <= U32_MAX else 8, sys.byteorder)
        nla_base_string.encode(self)

    def decode(self) -> None:
        nla_base_string.decode(self)
        raw = self["value"]
        self.value = self["value"] = int.from_bytes(bytes(raw), sys.byteorder) if raw else 0


def _pyroute2_type(kind: str) -> str:
    return "uint32" if kind == "u32" else "uint_var"


class NapiMsg(genlmsg):  # type: ignore[misc]
    """napi-get request/reply and napi-set request (attribute-set napi)."""

    nla_map = tuple((a.id, a.name, _pyroute2_type(a.kind)) for a in T.NAPI_ATTRS)
    uint_var = _uint


class QueueMsg(genlmsg):  # type: ignore[misc]
    """queue-get request/reply (attribute-set queue)."""

    nla_map = (
        (T.A_QUEUE_ID, "NETDEV_A_QUEUE_ID", "uint32"),
        (T.A_QUEUE_IFINDEX, "NETDEV_A_QUEUE_IFINDEX", "uint32"),
        (T.A_QUEUE_TYPE, "NETDEV_A_QUEUE_TYPE", "uint32"),
        (T.A_QUEUE_NAPI_ID, "NETDEV_A_QUEUE_NAPI_ID", "uint32"),
    )


@dataclass(frozen=True, slots=True, order=True)
class NapiKey:
    """Stable identity of a NAPI instance (its id is not).

    irq: the NAPI's IRQ, None when it has none. queue: lowest RX (else TX)
    queue index it serves, None when unknown; it only matters when irq is None.
    """

    ifindex: int
    irq: int | None
    queue: int | None = None

    def __str__(self) -> str:
        if self.irq is not None:
            return f"{self.ifindex}/irq-{self.irq}"
        if self.queue is not None:
            return f"{self.ifindex}/queue-{self.queue}"
        return f"{self.ifindex}/napi"

    @classmethod
    def parse(cls, text: str) -> NapiKey:
        """Inverse of str(): "3/irq-45", "3/queue-0", "3/napi"."""
        idx, sep, rest = text.partition("/")
        try:
            ifindex = int(idx)
            if sep and rest.startswith("irq-"):
                return cls(ifindex, int(rest[4:]))
            if sep and rest.startswith("queue-"):
                return cls(ifindex, None, int(rest[6:]))
            if sep and rest == "napi":
                return cls(ifindex, None)
        except ValueError:
            pass
        raise ValueError(f"not a NAPI key: {text!r} "
                         "(expected IFINDEX/irq-N, IFINDEX/queue-N or IFINDEX/napi)")


@dataclass(frozen=True, slots=True)
class NapiInfo:
    """One NAPI instance as napi-get reports it; None = attribute absent
    (not applicable, or older kernel). gro_flush_timeout and
    irq_suspend_timeout are nanoseconds. rx_queues/tx_queues come from
    queue-get (empty where it is missing or was not asked)."""

    id: int
    ifindex: int
    irq: int | None = None
    pid: int | None = None  # the napi/<dev>-<id> kthread when threaded
    defer_hard_irqs: int | None = None
    gro_flush_timeout: int | None = None
    irq_suspend_timeout: int | None = None
    threaded: bool | None = None
    rx_queues: tuple[int, ...] = ()
    tx_queues: tuple[int, ...] = ()

    @property
    def key(self) -> NapiKey:
        return napi_key(self)

    def config(self) -> dict[str, int | bool]:
        """The settable values that were reported, {field: value}: what a
        journal records before napi_set() and hands back to it on rollback."""
        out: dict[str, int | bool] = {}
        for a in T.NAPI_ATTRS:
            v = getattr(self, a.field)
            if a.settable and v is not None:
                out[a.field] = v
        return out


def napi_key(n: NapiInfo) -> NapiKey:
    """The stable key of `n` (see the module docstring)."""
    queues = n.rx_queues or n.tx_queues
    return NapiKey(n.ifindex, n.irq, min(queues) if queues else None)


@dataclass(frozen=True, slots=True)
class NetdevSupport:
    """What this kernel's netdev family offers (all False where it has none)."""

    napi_get: bool
    napi_set: bool
    queue_get: bool
    napi_set_fields: frozenset[str]  # settable NapiInfo fields napi-set accepts

    @property
    def family(self) -> bool:
        return self.napi_get or self.napi_set or self.queue_get


def _family(s: GenlSocket) -> Family:
    return s.family(T.FAMILY_NAME)


def _need(fam: Family, cmd: int, what: str, s: GenlSocket) -> None:
    if not fam.has(cmd):
        raise NetlinkError(f"netdev {what}", where(T.FAMILY_NAME, s.netns), errno.EOPNOTSUPP,
                           f"this kernel's netdev family has no {what}")


def _set_fields(s: GenlSocket, fam: Family) -> frozenset[str]:
    attrs = s.op_attrs(fam, T.CMD_NAPI_SET)
    if attrs is None:  # policy not introspectable: assume the 6.13 set
        attrs = frozenset({5, 6, 7})
    return frozenset(a.field for a in T.NAPI_ATTRS if a.settable and a.id in attrs)


def netdev_support(*, netns: str | None = None) -> NetdevSupport:
    """Feature-detect napi-get, napi-set (and its attributes), queue-get."""
    with GenlSocket(netns) as s:
        try:
            fam = _family(s)
        except NetlinkError as e:
            if e.errno == errno.EOPNOTSUPP:
                return NetdevSupport(False, False, False, frozenset())
            raise
        fields = _set_fields(s, fam) if fam.has(T.CMD_NAPI_SET) else frozenset()
        return NetdevSupport(fam.has(T.CMD_NAPI_GET), fam.has(T.CMD_NAPI_SET),
                             fam.has(T.CMD_QUEUE_GET), fields)


def _decode(reply: Any) -> dict[str, Any]:
    got: dict[str, Any] = {}
    for a in T.NAPI_ATTRS:
        v = reply.get_attr(a.name)
        if v is not None:
            got[a.field] = int(v)
    if "threaded" in got:
        got["threaded"] = got["threaded"] == T.NAPI_THREADED_ENABLED
    return got


def _queues(s: GenlSocket, fam: Family, ifindex: int | None) -> dict[int, tuple[list[int], list[int]]]:
    """napi id -> (rx queue ids, tx queue ids), via queue-get dump."""
    if not fam.has(T.CMD_QUEUE_GET):
        return {}
    msg = QueueMsg()
    msg["cmd"] = T.CMD_QUEUE_GET
    msg["version"] = T.FAMILY_VERSION
    if ifindex is not None:
        msg["attrs"].append(["NETDEV_A_QUEUE_IFINDEX", ifindex])
    out: dict[int, tuple[list[int], list[int]]] = {}
    for r in s.request(msg, fam.id, op="netdev queue-get", target=f"ifindex {ifindex}", dump=True):
        napi = r.get_attr("NETDEV_A_QUEUE_NAPI_ID")
        qid = r.get_attr("NETDEV_A_QUEUE_ID")
        if napi is None or qid is None:
            continue
        rx, tx = out.setdefault(napi, ([], []))
        (rx if r.get_attr("NETDEV_A_QUEUE_TYPE") == T.QUEUE_TYPE_RX else tx).append(qid)
    return out


def _info(d: dict[str, Any], queues: dict[int, tuple[list[int], list[int]]]) -> NapiInfo:
    rx, tx = queues.get(d["id"], ([], []))
    return NapiInfo(**d, rx_queues=tuple(sorted(rx)), tx_queues=tuple(sorted(tx)))


def napi_list(ifindex: int | None = None, *, netns: str | None = None,
              queues: bool = True) -> tuple[NapiInfo, ...]:
    """Every NAPI of device `ifindex` (all devices of the namespace when None),
    by napi-get dump, sorted by (ifindex, id). queues=True also maps each NAPI
    to its queues (one queue-get dump) so IRQ-less NAPIs get a usable key.
    A device that is down usually lists none (seen on veth and netdevsim)."""
    with GenlSocket(netns) as s:
        fam = _family(s)
        _need(fam, T.CMD_NAPI_GET, "napi-get", s)
        msg = NapiMsg()
        msg["cmd"] = T.CMD_NAPI_GET
        msg["version"] = T.FAMILY_VERSION
        if ifindex is not None:
            msg["attrs"].append(["NETDEV_A_NAPI_IFINDEX", ifindex])
        replies = s.request(msg, fam.id, op="netdev napi-get",
                            target=f"ifindex {ifindex}" if ifindex is not None else "all", dump=True)
        qmap = _queues(s, fam, ifindex) if queues else {}
    found = [_info(_decode(r), qmap) for r in replies]
    return tuple(sorted(found, key=lambda n: (n.ifindex, n.id)))


def napi_get(napi_id: int, *, netns: str | None = None, queues: bool = True) -> NapiInfo:
    """One NAPI by its current id (napi-get do). ENOENT (GONE) when no such id."""
    with GenlSocket(netns) as s:
        fam = _family(s)
        _need(fam, T.CMD_NAPI_GET, "napi-get", s)
        msg = NapiMsg()
        msg["cmd"] = T.CMD_NAPI_GET
        msg["version"] = T.FAMILY_VERSION
        msg["attrs"].append(["NETDEV_A_NAPI_ID", napi_id])
        replies = s.request(msg, fam.id, op="netdev napi-get", target=f"napi {napi_id}")
        if not replies:
            raise NetlinkError("netdev napi-get", where(f"napi {napi_id}", netns), errno.ENOENT)
        d = _decode(replies[0])
        qmap = _queues(s, fam, d["ifindex"]) if queues else {}
    return _info(d, qmap)


def find_napi(ifindex: int, irq: int | None, *, queue: int | None = None,
              netns: str | None = None) -> NapiInfo | None:
    """The NAPI with key (ifindex, irq[, queue]) now, or None if there is none
    (device down, IRQ gone). ValueError when the key matches several NAPIs
    (IRQ-less NAPIs and no queue given): the caller must not guess."""
    return select_napi(napi_list(ifindex, netns=netns), NapiKey(ifindex, irq, queue))


def select_napi(napis: Iterable[NapiInfo], key: NapiKey) -> NapiInfo | None:
    """find_napi() over an already-read list (pure)."""
    cands = [n for n in napis if n.ifindex == key.ifindex and n.irq == key.irq]
    if key.queue is not None and (key.irq is None or len(cands) > 1):
        cands = [n for n in cands if napi_key(n).queue == key.queue]
    if len(cands) > 1:
        raise ValueError(f"NAPI key {key} matches {len(cands)} NAPIs "
                         f"(ids {', '.join(str(n.id) for n in cands)}): give the queue index")
    return cands[0] if cands else None


def napi_set(napi_id: int, *, netns: str | None = None,
             defer_hard_irqs: int | None = None, gro_flush_timeout: int | None = None,
             irq_suspend_timeout: int | None = None, threaded: bool | None = None) -> None:
    """Configure one NAPI (napi-set); only the given values are sent.

    defer_hard_irqs: 0..2^31-1; gro_flush_timeout, irq_suspend_timeout: ns,
    0..2^64-1; threaded: start/stop this NAPI's kthread (6.17+). On 6.18 a
    per-NAPI threaded=False is accepted while sys/class/net/DEV/threaded is 1
    (that NAPI alone leaves threaded mode; seen on veth), and a later write to
    the device-wide file resets every NAPI. Values survive link down/up only
    for drivers that use netif_napi_add_config(); veth's do not (its NAPIs
    come back with new ids and the device-wide values).
    """
    want: dict[str, int | bool] = {}
    for field, v, hi in (("defer_hard_irqs", defer_hard_irqs, 0x7FFFFFFF),
                         ("gro_flush_timeout", gro_flush_timeout, U64_MAX),
                         ("irq_suspend_timeout", irq_suspend_timeout, U64_MAX)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
            raise ValueError(f"{field.replace('_', '-')} must be an integer 0..{hi}, not {v!r}")
        want[field] = v
    if threaded is not None:
        if not isinstance(threaded, bool):
            raise ValueError(f"threaded must be a bool, not {threaded!r}")
        want["threaded"] = threaded
    if not want:
        return
    msg = NapiMsg()
    msg["cmd"] = T.CMD_NAPI_SET
    msg["version"] = T.FAMILY_VERSION
    msg["attrs"].append(["NETDEV_A_NAPI_ID", napi_id])
    for a in T.NAPI_ATTRS:
        if a.field in want:
            msg["attrs"].append([a.name, int(want[a.field])])
    with GenlSocket(netns) as s:
        fam = _family(s)
        _need(fam, T.CMD_NAPI_SET, "napi-set", s)
        missing = set(want) - _set_fields(s, fam)
        if missing:
            raise NetlinkError("netdev napi-set", where(f"napi {napi_id}", netns), errno.EOPNOTSUPP,
                               f"this kernel's napi-set has no {', '.join(sorted(missing))}")
        s.request(msg, fam.id, op="netdev napi-set", target=f"napi {napi_id}")


__all__ = [
    "NapiInfo",
    "NapiKey",
    "NapiMsg",
    "NetdevSupport",
    "QueueMsg",
    "find_napi",
    "napi_get",
    "napi_key",
    "napi_list",
    "napi_set",
    "netdev_support",
    "select_napi",
]
