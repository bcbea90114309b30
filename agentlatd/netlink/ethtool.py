"""ethtool netlink coalescing: ETHTOOL_MSG_COALESCE_GET / _SET.

Documentation/networking/ethtool-netlink.rst (COALESCE_GET, COALESCE_SET);
ids in agentlatd.kernel.ethtool_nl; net/ethtool/coalesce.c is the kernel side.

pyroute2 0.9.7 ships ethtool netlink messages for link info, modes, rings and
so on, but none for coalescing: CoalesceMsg below is that message, built from
the declarative table. The request header is a nest that must carry
NLA_F_NESTED (see ethtool_nl.A_HEADER_*).

What the kernel reports. coalesce_put_u32()/coalesce_put_bool() in
net/ethtool/coalesce.c leave an attribute out when its value is 0 *and* the
driver does not list it in supported_coalesce_params: a field of Coalesce is
None when the device did not report it. A SET naming a parameter the driver
does not support fails as a whole with EOPNOTSUPP ("unsupported parameter");
a driver without ->get_coalesce (veth, on 6.18) answers EOPNOTSUPP to GET and
SET alike. Both surface as NetlinkError with errclass UNSUPPORTED: reported,
not fatal.

String form (the engine's Change.current/desired): "key=value,..." with ethtool
-C keywords in attribute-id order, booleans as on/off, None fields left out:
"rx-usecs=20,rx-frames=0,adaptive-rx=off". parse_coalesce() reads it back and
refuses anything else, so a planner bug shows up as an error, not as a write.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLA_F_NESTED, genlmsg, nla

from agentlatd.kernel import ethtool_nl as T
from agentlatd.netlink import GenlSocket, NetlinkError, where

Value = int | bool


class _Header(nla):  # type: ignore[misc]
    """ETHTOOL_A_*_HEADER: always sent with NLA_F_NESTED (strict parsing)."""

    nla_flags = NLA_F_NESTED
    nla_map = (
        (T.A_HEADER_DEV_INDEX, "ETHTOOL_A_HEADER_DEV_INDEX", "uint32"),
        (T.A_HEADER_DEV_NAME, "ETHTOOL_A_HEADER_DEV_NAME", "asciiz"),
        (T.A_HEADER_FLAGS, "ETHTOOL_A_HEADER_FLAGS", "uint32"),
        (T.A_HEADER_PHY_INDEX, "ETHTOOL_A_HEADER_PHY_INDEX", "uint32"),
    )


class CoalesceMsg(genlmsg):  # type: ignore[misc]
    """ETHTOOL_MSG_COALESCE_GET / _SET request and GET_REPLY."""

    nla_map = (
        (T.A_COALESCE_HEADER, "ETHTOOL_A_COALESCE_HEADER", "coalesce_header"),
        *((a.id, a.name, "uint32" if a.kind == "u32" else "uint8") for a in T.COALESCE_ATTRS),
        (T.A_COALESCE_RX_PROFILE, "ETHTOOL_A_COALESCE_RX_PROFILE", "cdata"),
        (T.A_COALESCE_TX_PROFILE, "ETHTOOL_A_COALESCE_TX_PROFILE", "cdata"),
    )
    coalesce_header = _Header


@dataclass(frozen=True, slots=True)
class Coalesce:
    """Interrupt coalescing of one device; None = not reported by the device.

    Field names are the ETHTOOL_A_COALESCE_* names in lower case; times in
    microseconds (tx-aggr-max-bytes in bytes, pkt-rate-* in packets/s).
    """

    rx_usecs: int | None = None
    rx_max_frames: int | None = None
    rx_usecs_irq: int | None = None
    rx_max_frames_irq: int | None = None
    tx_usecs: int | None = None
    tx_max_frames: int | None = None
    tx_usecs_irq: int | None = None
    tx_max_frames_irq: int | None = None
    stats_block_usecs: int | None = None
    use_adaptive_rx: bool | None = None
    use_adaptive_tx: bool | None = None
    pkt_rate_low: int | None = None
    rx_usecs_low: int | None = None
    rx_max_frames_low: int | None = None
    tx_usecs_low: int | None = None
    tx_max_frames_low: int | None = None
    pkt_rate_high: int | None = None
    rx_usecs_high: int | None = None
    rx_max_frames_high: int | None = None
    tx_usecs_high: int | None = None
    tx_max_frames_high: int | None = None
    rate_sample_interval: int | None = None
    use_cqe_mode_tx: bool | None = None
    use_cqe_mode_rx: bool | None = None
    tx_aggr_max_bytes: int | None = None
    tx_aggr_max_frames: int | None = None
    tx_aggr_time_usecs: int | None = None

    def __post_init__(self) -> None:
        for a in T.COALESCE_ATTRS:
            v = getattr(self, a.field)
            if v is not None:
                _check(a, v)

    def values(self) -> dict[str, Value]:
        """The reported fields only, {field: value}, in attribute-id order."""
        out: dict[str, Value] = {}
        for a in T.COALESCE_ATTRS:
            v = getattr(self, a.field)
            if v is not None:
                out[a.field] = v
        return out

    def only(self, fields: Iterable[str] | Coalesce) -> Coalesce:
        """This Coalesce restricted to `fields` (names; a Coalesce: its set fields).
        The engine journals get_coalesce().only(desired) as the original."""
        names = set(fields.values()) if isinstance(fields, Coalesce) else set(fields)
        _known(dict.fromkeys(names))
        return _coalesce({k: v for k, v in self.values().items() if k in names})

    def update(self, **fields: Value | None) -> Coalesce:
        """A copy with `fields` replaced (None clears one)."""
        _known(fields)
        merged: dict[str, Any] = {a.field: getattr(self, a.field) for a in T.COALESCE_ATTRS}
        merged.update(fields)
        return _coalesce(merged)

    def __str__(self) -> str:
        return format_coalesce(self)

    def ethtool_args(self) -> tuple[str, ...]:
        """The same values as ethtool -C arguments: ("rx-usecs", "20", "adaptive-rx", "off")."""
        out: list[str] = []
        for field, v in self.values().items():
            out += [T.BY_FIELD[field].key, _fmt(v)]
        return tuple(out)


def _coalesce(fields: dict[str, Any]) -> Coalesce:
    return Coalesce(**fields)


def _known(fields: dict[str, Any]) -> None:
    unknown = set(fields) - T.BY_FIELD.keys()
    if unknown:
        raise ValueError(f"not a coalescing field: {', '.join(sorted(unknown))}")


def _check(a: T.CoalesceAttr, v: object) -> None:
    if a.kind == "bool":
        if not isinstance(v, bool):
            raise ValueError(f"{a.key} must be on/off (a bool), not {v!r}")
    elif isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= T.U32_MAX:
        raise ValueError(f"{a.key} must be an integer 0..{T.U32_MAX}, not {v!r}")


def _fmt(v: Value) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def format_coalesce(c: Coalesce) -> str:
    """Canonical "key=value,..." form (ethtool -C keywords, id order, on/off)."""
    return ",".join(f"{T.BY_FIELD[f].key}={_fmt(v)}" for f, v in c.values().items())


def parse_coalesce(text: str) -> Coalesce:
    """Inverse of format_coalesce. Keys may come in any order but once each;
    booleans are on/off; "" is a Coalesce with nothing set. ValueError otherwise."""
    fields: dict[str, Value] = {}
    text = text.strip()
    if not text:
        return Coalesce()
    for item in text.split(","):
        key, sep, raw = item.strip().partition("=")
        key, raw = key.strip(), raw.strip()
        a = T.BY_KEY.get(key)
        if not sep or a is None:
            raise ValueError(f"coalescing setting {item.strip()!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(T.BY_KEY)}")
        if a.field in fields:
            raise ValueError(f"coalescing key {key!r} given twice")
        if a.kind == "bool":
            if raw not in ("on", "off"):
                raise ValueError(f"{key} must be on or off, not {raw!r}")
            fields[a.field] = raw == "on"
        else:
            if not raw.isdigit():
                raise ValueError(f"{key} must be a non-negative integer, not {raw!r}")
            fields[a.field] = int(raw)
    return _coalesce(fields)


def _request(ifname: str, cmd: int) -> Any:
    msg = CoalesceMsg()
    msg["cmd"] = cmd
    msg["version"] = T.FAMILY_VERSION
    msg["attrs"].append(["ETHTOOL_A_COALESCE_HEADER",
                         {"attrs": [["ETHTOOL_A_HEADER_DEV_NAME", ifname]]}])
    return msg


def encode_get(ifname: str, family_id: int = 0) -> bytes:
    """The COALESCE_GET request as sent (for tests: no socket involved)."""
    msg = _request(ifname, T.MSG_COALESCE_GET)
    msg["header"]["type"] = family_id
    msg["header"]["flags"] = 0x05
    msg.encode()
    return bytes(msg.data)


def _decode(reply: Any) -> Coalesce:
    got: dict[str, Value] = {}
    for a in T.COALESCE_ATTRS:
        v = reply.get_attr(a.name)
        if v is not None:
            got[a.field] = bool(v) if a.kind == "bool" else int(v)
    return _coalesce(got)


def _family(s: GenlSocket, cmd: int) -> int:
    fam = s.family(T.FAMILY_NAME)
    if not fam.has(cmd):
        raise NetlinkError("ethtool", where(T.FAMILY_NAME, s.netns), errno.EOPNOTSUPP,
                           f"the ethtool family has no command {cmd}")
    return fam.id


def get_coalesce(ifname: str, *, netns: str | None = None) -> Coalesce:
    """The device's coalescing (ETHTOOL_MSG_COALESCE_GET).

    netns: None = the caller's network namespace; else a /run/netns name.
    Raises NetlinkError: UNSUPPORTED (EOPNOTSUPP: no coalescing in the driver,
    or no ethtool netlink in the kernel), GONE (ENODEV: no such device).
    """
    with GenlSocket(netns) as s:
        fid = _family(s, T.MSG_COALESCE_GET)
        replies = s.request(_request(ifname, T.MSG_COALESCE_GET), fid,
                            op="ethtool coalesce-get", target=ifname)
    if not replies:
        raise NetlinkError("ethtool coalesce-get", where(ifname, netns), errno.EIO, "empty reply")
    return _decode(replies[0])


def set_coalesce(ifname: str, *, netns: str | None = None, **fields: Value) -> None:
    """Write the given fields (ETHTOOL_MSG_COALESCE_SET) in one request; the
    kernel merges them into the current settings, so unnamed fields keep their
    values. Verify with get_coalesce(): drivers may round (e1000e, igb).

    set_coalesce("eth0", rx_usecs=20, use_adaptive_rx=False)
    set_coalesce("eth0", **parse_coalesce("rx-usecs=20,adaptive-rx=off").values())
    """
    _known(fields)
    for k, v in fields.items():
        _check(T.BY_FIELD[k], v)
    if not fields:
        return
    msg = _request(ifname, T.MSG_COALESCE_SET)
    for a in T.COALESCE_ATTRS:  # id order, like ethtool(8)
        if a.field in fields:
            v = fields[a.field]
            msg["attrs"].append([a.name, int(v)])
    with GenlSocket(netns) as s:
        fid = _family(s, T.MSG_COALESCE_SET)
        s.request(msg, fid, op="ethtool coalesce-set", target=ifname)


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """One field of check_coalesce_roundtrip(): what was written, what came back."""

    field: str
    original: Value
    wrote: Value
    read_back: Value | None
    restored: Value | None

    @property
    def ok(self) -> bool:
        return self.read_back == self.wrote and self.restored == self.original


def check_coalesce_roundtrip(ifname: str, *, netns: str | None = None,
                             fields: tuple[str, ...] | None = None) -> list[RoundTrip]:
    """Write a different value to each reported field (or `fields`) one at a
    time, read it back, restore the original, read again. For the VM tier
    (netdevsim, igb, e1000e): no CLI involved. Raises NetlinkError where the
    device refuses; a field that ends up not restored raises AssertionError
    after the remaining fields are still restored.
    """
    orig = get_coalesce(ifname, netns=netns)
    names = fields if fields is not None else tuple(orig.values())
    out: list[RoundTrip] = []
    for f in names:
        before = getattr(orig, f)
        if before is None:
            continue
        a = T.BY_FIELD[f]
        new: Value = (not before) if a.kind == "bool" else (before + 7 if before < 1000 else before - 7)
        try:
            set_coalesce(ifname, netns=netns, **{f: new})
            back = getattr(get_coalesce(ifname, netns=netns), f)
        finally:
            set_coalesce(ifname, netns=netns, **{f: before})
        restored = getattr(get_coalesce(ifname, netns=netns), f)
        out.append(RoundTrip(f, before, new, back, restored))
    bad = [r for r in out if r.restored != r.original]
    if bad:
        raise AssertionError(f"{where(ifname, netns)}: not restored: {bad}")
    return out


__all__ = [
    "Coalesce",
    "CoalesceMsg",
    "RoundTrip",
    "check_coalesce_roundtrip",
    "encode_get",
    "format_coalesce",
    "get_coalesce",
    "parse_coalesce",
    "set_coalesce",
]
