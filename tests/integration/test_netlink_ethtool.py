"""ethtool netlink coalescing against the real kernel, in network namespaces the tests create.

What these pin (6.18.44 dev host, 2025): veth has no ->get_coalesce/->set_coalesce,
so COALESCE_GET and _SET both answer EOPNOTSUPP; a header nest without
NLA_F_NESTED answers EINVAL ("NLA_F_NESTED is missing"); an unknown device
answers ENODEV ("no device matches name"). netdevsim (every coalescing field
settable) is exercised where the module loads, else in the VM tier.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import secrets
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from pyroute2.netlink import genlmsg, nla

from agentlatd.kernel import ethtool_nl as T
from agentlatd.kernel.errnos import ErrClass
from agentlatd.netlink import NLA_F_NESTED, GenlSocket, NetlinkError
from agentlatd.netlink.ethtool import (
    Coalesce,
    _Header,
    check_coalesce_roundtrip,
    encode_get,
    format_coalesce,
    get_coalesce,
    parse_coalesce,
    set_coalesce,
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _del_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    assert not os.path.exists(f"/run/netns/{name}"), f"netns {name} left behind"


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace holding veth pair v0/v1 (nothing on the host is touched)."""
    name = f"alt-eth-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", name, "link", "set", "v0", "up")
        _ip("-n", name, "link", "set", "v1", "up")
        yield name
    finally:
        _del_netns(name)


# -- encoding, no socket ----------------------------------------------------

def test_header_nest_carries_nla_f_nested() -> None:
    data = encode_get("veth0", family_id=21)
    ln, typ, _flags, _seq, _pid = struct.unpack_from("=IHHII", data)
    assert (ln, typ) == (len(data), 21)
    cmd, version = struct.unpack_from("=BB", data, 16)
    assert (cmd, version) == (T.MSG_COALESCE_GET, T.FAMILY_VERSION)
    alen, atype = struct.unpack_from("=HH", data, 20)
    assert atype & NLA_F_NESTED, f"header nest type {atype:#x} lacks NLA_F_NESTED"
    assert atype & 0x3FFF == T.A_COALESCE_HEADER
    ilen, itype = struct.unpack_from("=HH", data, 24)
    assert itype == T.A_HEADER_DEV_NAME
    assert data[28:24 + ilen] == b"veth0\0"
    assert alen == 4 + ((ilen + 3) & ~3)


def test_canonical_string_roundtrip() -> None:
    c = Coalesce(rx_usecs=20, use_adaptive_rx=False, tx_max_frames=0, use_cqe_mode_rx=True)
    text = format_coalesce(c)
    # attribute-id order, ethtool -C keywords, on/off
    assert text == "rx-usecs=20,tx-frames=0,adaptive-rx=off,cqe-mode-rx=on"
    assert str(c) == text
    assert parse_coalesce(text) == c
    assert parse_coalesce(" adaptive-rx = off , rx-usecs=20,tx-frames=0,cqe-mode-rx=on") == c
    assert c.ethtool_args() == ("rx-usecs", "20", "tx-frames", "0", "adaptive-rx", "off",
                                "cqe-mode-rx", "on")
    assert parse_coalesce("") == Coalesce()
    assert format_coalesce(Coalesce()) == ""
    every = Coalesce(**{a.field: (True if a.kind == "bool" else a.id) for a in T.COALESCE_ATTRS})
    assert parse_coalesce(format_coalesce(every)) == every


@pytest.mark.parametrize("bad", [
    "rx-usecs", "rx_usecs=1", "rx-usecs=-1", "rx-usecs=1.5", "rx-usecs=4294967296",
    "adaptive-rx=1", "adaptive-rx=true", "rx-usecs=1,rx-usecs=2", "bogus=1", "rx-usecs=1,",
])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_coalesce(bad)


def test_values_are_checked() -> None:
    with pytest.raises(ValueError):
        Coalesce(rx_usecs=-1)
    with pytest.raises(ValueError):
        Coalesce(use_adaptive_rx=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Coalesce(rx_usecs=True)
    with pytest.raises(ValueError):
        set_coalesce("v0", rx_usec=3)  # typo: refused before any socket
    c = Coalesce(rx_usecs=8, tx_usecs=9, use_adaptive_rx=True)
    assert c.only(["rx_usecs", "use_adaptive_rx"]) == Coalesce(rx_usecs=8, use_adaptive_rx=True)
    assert c.only(Coalesce(tx_usecs=1)) == Coalesce(tx_usecs=9)
    assert c.update(rx_usecs=1, tx_usecs=None) == Coalesce(rx_usecs=1, use_adaptive_rx=True)
    with pytest.raises(ValueError):
        c.only(["rx_usec"])


# -- the real kernel ---------------------------------------------------------

@pytest.mark.netns
def test_veth_coalesce_get_and_set_are_unsupported(ns: str) -> None:
    for call in (lambda: get_coalesce("v0", netns=ns),
                 lambda: set_coalesce("v0", netns=ns, rx_usecs=20, use_adaptive_rx=False)):
        with pytest.raises(NetlinkError) as ei:
            call()
        e = ei.value
        assert e.errno == errno.EOPNOTSUPP
        assert e.errclass is ErrClass.UNSUPPORTED
        assert "v0" in str(e) and ns in str(e)


@pytest.mark.netns
def test_header_without_nla_f_nested_is_einval(ns: str) -> None:
    """Why _Header sets NLA_F_NESTED: the same request without it is refused."""

    # fresh classes (pyroute2 caches each class's compiled nla table, subclasses included)
    class BareHeader(nla):  # type: ignore[misc]
        nla_flags = 0
        nla_map = _Header.nla_map

    class BareMsg(genlmsg):  # type: ignore[misc]
        nla_map = ((T.A_COALESCE_HEADER, "ETHTOOL_A_COALESCE_HEADER", "bare_header"),)
        bare_header = BareHeader

    msg = BareMsg()
    msg["cmd"] = T.MSG_COALESCE_GET
    msg["version"] = T.FAMILY_VERSION
    msg["attrs"].append(["ETHTOOL_A_COALESCE_HEADER", {"attrs": [["ETHTOOL_A_HEADER_DEV_NAME", "v0"]]}])
    with GenlSocket(ns) as s, pytest.raises(NetlinkError) as ei:
        s.request(msg, s.family(T.FAMILY_NAME).id, op="ethtool coalesce-get", target="v0")
    assert ei.value.errno == errno.EINVAL
    assert "NLA_F_NESTED" in ei.value.extack


@pytest.mark.netns
def test_unknown_device_is_gone(ns: str) -> None:
    with pytest.raises(NetlinkError) as ei:
        get_coalesce("nosuch0", netns=ns)
    assert ei.value.errno == errno.ENODEV
    assert ei.value.errclass is ErrClass.GONE
    assert ei.value.extack  # the kernel names the problem


@pytest.mark.netns
def test_missing_netns_is_gone_and_not_created() -> None:
    name = f"alt-none-{secrets.token_hex(4)}"
    with pytest.raises(NetlinkError) as ei:
        get_coalesce("v0", netns=name)
    assert ei.value.errclass is ErrClass.GONE
    assert not os.path.exists(f"/run/netns/{name}")


@pytest.mark.netns
def test_caller_namespace_under_ip_netns_exec(ns: str) -> None:
    """netns=None uses the caller's namespace: the engine may run under `ip netns exec`."""
    code = ("from agentlatd.netlink.ethtool import get_coalesce\n"
            "try:\n    get_coalesce('v0')\nexcept Exception as e:\n"
            "    print(type(e).__name__, e.errclass.value)\n")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["NetlinkError", "unsupported"]


@pytest.mark.netns
def test_netns_call_leaves_the_process_namespace_alone(ns: str) -> None:
    before = (os.readlink("/proc/self/ns/net"), os.readlink("/proc/thread-self/ns/net"))
    with pytest.raises(NetlinkError):
        get_coalesce("v0", netns=ns)
    assert (os.readlink("/proc/self/ns/net"), os.readlink("/proc/thread-self/ns/net")) == before


@pytest.mark.netns
def test_callable_from_a_running_event_loop_and_other_threads(ns: str) -> None:
    """pyroute2 0.9.7's sync GenericNetlinkSocket raises 'This event loop is already
    running' inside a coroutine; ours is a plain blocking socket."""

    async def in_loop() -> int:
        try:
            get_coalesce("v0", netns=ns)
        except NetlinkError as e:
            return e.errno
        return 0

    assert asyncio.run(in_loop()) == errno.EOPNOTSUPP
    got: list[int] = []

    def in_thread() -> None:
        try:
            get_coalesce("v0", netns=ns)
        except NetlinkError as e:
            got.append(e.errno)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(30)
    assert got == [errno.EOPNOTSUPP]


def _load_netdevsim() -> str | None:
    """None when netdevsim is usable, else why not (an image without kmod has no modprobe)."""
    if os.path.isdir("/sys/bus/netdevsim"):
        return None
    modprobe = shutil.which("modprobe")
    if modprobe is None:
        return "no modprobe on PATH (Debian package kmod; tests/run.sh installs it)"
    r = subprocess.run([modprobe, "netdevsim"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not os.path.isdir("/sys/bus/netdevsim"):
        return f"netdevsim not loadable here: {(r.stderr or r.stdout).strip()[:160]}"
    return None


def test_netdevsim_test_fails_without_modprobe(tmp_path: pathlib.Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On an image without kmod the netdevsim test skips and says why, never
    FileNotFoundError: 'modprobe'."""
    if os.path.isdir("/sys/bus/netdevsim"):
        pytest.skip("netdevsim already loaded: the modprobe path is not taken")
    monkeypatch.setenv("PATH", str(tmp_path))  # an image without kmod
    why = _load_netdevsim()
    assert why is not None and "no modprobe" in why and "kmod" in why


@pytest.mark.netns
def test_netdevsim_every_field_set_and_read_back() -> None:
    why = _load_netdevsim()
    if why:
        pytest.skip(why + " (the VM tier runs check_coalesce_roundtrip on netdevsim, igb, e1000e)")
    name = f"alt-nsim-{secrets.token_hex(4)}"
    dev_id = 1000 + secrets.randbelow(50000)
    _ip("netns", "add", name)
    try:
        # created from inside the namespace: netdevsim puts its ports in the writer's netns
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c",
                        f"echo '{dev_id} 1' > /sys/bus/netdevsim/new_device"], check=True, timeout=30)
        try:
            netdir = f"/sys/bus/netdevsim/devices/netdevsim{dev_id}/net"
            ifname = subprocess.run(["ip", "netns", "exec", name, "ls", netdir], capture_output=True,
                                    text=True, check=True, timeout=30).stdout.split()[0]
            orig = get_coalesce(ifname, netns=name)
            want: dict[str, int | bool] = {
                a.field: (not getattr(orig, a.field)) if a.kind == "bool" else a.id + 10
                for a in T.COALESCE_ATTRS if getattr(orig, a.field) is not None}
            assert want, f"netdevsim reported no coalescing fields: {orig}"
            set_coalesce(ifname, netns=name, **want)
            assert get_coalesce(ifname, netns=name).only(list(want)).values() == want
            set_coalesce(ifname, netns=name, **orig.values())
            assert get_coalesce(ifname, netns=name) == orig
            report = check_coalesce_roundtrip(ifname, netns=name)
            assert report and all(r.ok for r in report), report
        finally:
            subprocess.run(["sh", "-c", f"echo {dev_id} > /sys/bus/netdevsim/del_device"], timeout=30)
    finally:
        _del_netns(name)
