"""netdev netlink NAPI (napi-get, napi-set) against the real kernel, on veth pairs in
network namespaces the tests create.

veth gets one NAPI per RX queue once GRO is on (ethtool -K v0 gro on), without an
IRQ. Seen on the 6.18.44 dev host: napi-set accepts defer-hard-irqs,
gro-flush-timeout (u64 on the wire above 2^32-1), irq-suspend-timeout and
threaded; a link down/up gives the NAPI a new id and drops its per-NAPI config.
On kernels without the family or op (6.1: no netdev family) every call must
raise UNSUPPORTED, which the first test checks instead.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from agentlatd.kernel.errnos import ErrClass
from agentlatd.netlink import NetlinkError
from agentlatd.netlink.netdev import (
    NapiInfo,
    NapiKey,
    NetdevSupport,
    find_napi,
    napi_get,
    napi_key,
    napi_list,
    napi_set,
    netdev_support,
    select_napi,
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _ifindex(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/ifindex"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return int(out)


def _make_ns(queues: int = 1) -> str:
    name = f"alt-napi-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        q = ["numrxqueues", str(queues), "numtxqueues", str(queues)]
        _ip("-n", name, "link", "add", "v0", *q, "type", "veth", "peer", "name", "v1", *q)
        _ip("-n", name, "link", "set", "v0", "up")
        _ip("-n", name, "link", "set", "v1", "up")
        # veth adds its NAPIs when GRO (or XDP, or threaded) is turned on
        subprocess.run(["ip", "netns", "exec", name, "ethtool", "-K", "v0", "gro", "on"],
                       check=True, capture_output=True, timeout=30)
    except BaseException:
        _del_ns(name)
        raise
    return name


def _del_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    assert not os.path.exists(f"/run/netns/{name}"), f"netns {name} left behind"


@pytest.fixture(scope="module")
def support() -> NetdevSupport:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    return netdev_support()


@pytest.fixture
def ns(support: NetdevSupport) -> Iterator[str]:
    if not support.napi_get:
        pytest.skip(f"kernel {os.uname().release} has no netdev napi-get (6.8+)")
    if shutil.which("ethtool") is None:
        pytest.skip("ethtool(8) not installed (tests/run.sh installs it)")
    name = _make_ns()
    try:
        yield name
    finally:
        _del_ns(name)


def _only_napi(ns: str) -> NapiInfo:
    napis = napi_list(_ifindex(ns, "v0"), netns=ns)
    assert len(napis) == 1, napis
    return napis[0]


# -- pure ---------------------------------------------------------------------

def test_key_text_roundtrip_and_selection() -> None:
    for k in (NapiKey(3, 45), NapiKey(3, None, 2), NapiKey(3, None)):
        assert NapiKey.parse(str(k)) == k
    for bad in ("", "3", "x/irq-1", "3/irq-", "3/queue-x", "3/other"):
        with pytest.raises(ValueError):
            NapiKey.parse(bad)
    a = NapiInfo(id=10, ifindex=3, irq=None, rx_queues=(0,))
    b = NapiInfo(id=11, ifindex=3, irq=None, rx_queues=(1,))
    c = NapiInfo(id=12, ifindex=4, irq=77, rx_queues=(0,))
    assert napi_key(b) == NapiKey(3, None, 1) and c.key == NapiKey(4, 77, 0)
    assert select_napi([a, b, c], NapiKey(3, None, 1)) == b
    assert select_napi([a, b, c], NapiKey(4, 77)) == c
    assert select_napi([a, b, c], NapiKey(4, 78)) is None
    with pytest.raises(ValueError):
        select_napi([a, b, c], NapiKey(3, None))  # two IRQ-less NAPIs: refuse to guess


def test_napi_set_checks_values_before_any_socket() -> None:
    for kw in ({"defer_hard_irqs": -1}, {"defer_hard_irqs": 2**31}, {"gro_flush_timeout": 2**64},
               {"irq_suspend_timeout": True}, {"threaded": 1}):
        with pytest.raises(ValueError):
            napi_set(1, netns="/nonexistent", **kw)  # type: ignore[arg-type]


# -- the real kernel ---------------------------------------------------------

@pytest.mark.netns
def test_feature_detection_matches_the_kernel(support: NetdevSupport) -> None:
    print(f"{os.uname().release}: {support}")
    if not support.napi_get:
        with pytest.raises(NetlinkError) as ei:
            napi_list()
        assert ei.value.errno == errno.EOPNOTSUPP and ei.value.errclass is ErrClass.UNSUPPORTED
    if not support.napi_set:
        with pytest.raises(NetlinkError) as ei:
            napi_set(1, defer_hard_irqs=1)
        assert ei.value.errclass is ErrClass.UNSUPPORTED
    else:
        # napi-set and these three came together (6.13)
        assert {"defer_hard_irqs", "gro_flush_timeout", "irq_suspend_timeout"} <= support.napi_set_fields


@pytest.mark.netns
def test_napi_dump_on_veth(ns: str) -> None:
    idx = _ifindex(ns, "v0")
    n = _only_napi(ns)
    assert n.ifindex == idx and n.id > 0
    assert n.irq is None  # veth NAPIs have no IRQ
    assert n.pid is None and n.threaded in (None, False)
    assert napi_list(_ifindex(ns, "v1"), netns=ns) == ()  # GRO off on v1: no NAPI
    assert n in napi_list(netns=ns)  # the unfiltered dump sees it too
    assert napi_get(n.id, netns=ns) == n
    assert find_napi(idx, None, netns=ns) == n


@pytest.mark.netns
def test_napi_set_reads_back_and_restores(ns: str, support: NetdevSupport) -> None:
    if not support.napi_set:
        pytest.skip("no napi-set on this kernel (6.13+)")
    orig = _only_napi(ns)
    want = {"defer_hard_irqs": 7, "gro_flush_timeout": 5_000_000_000}  # > 2^32: NLA_UINT as u64
    if "irq_suspend_timeout" in support.napi_set_fields:
        want["irq_suspend_timeout"] = 20_000_000
    try:
        napi_set(orig.id, netns=ns, **want)
        got = napi_get(orig.id, netns=ns)
        assert {k: getattr(got, k) for k in want} == want
        assert got.id == orig.id and got.key == orig.key
    finally:
        napi_set(orig.id, netns=ns, **{k: v for k, v in orig.config().items() if k in want})
    assert napi_get(orig.id, netns=ns) == orig


@pytest.mark.netns
def test_threaded_via_napi_set(ns: str, support: NetdevSupport) -> None:
    if "threaded" not in support.napi_set_fields:
        pytest.skip(f"napi-set has no threaded attribute on {os.uname().release} (6.17+)")
    orig = _only_napi(ns)
    assert orig.threaded is False and orig.pid is None
    try:
        napi_set(orig.id, netns=ns, threaded=True)
        on = napi_get(orig.id, netns=ns)
        assert on.threaded is True and on.pid is not None
        with open(f"/proc/{on.pid}/comm") as f:
            assert f.read().startswith("napi/v0-")
    finally:
        napi_set(orig.id, netns=ns, threaded=False)
    assert napi_get(orig.id, netns=ns) == orig


@pytest.mark.netns
def test_unknown_napi_id_is_gone(ns: str) -> None:
    ids = {n.id for n in napi_list(netns=ns)}
    missing = max(ids) + 100000
    with pytest.raises(NetlinkError) as ei:
        napi_get(missing, netns=ns)
    assert ei.value.errclass is ErrClass.GONE


@pytest.mark.netns
def test_key_survives_link_flap_but_id_and_config_do_not(ns: str, support: NetdevSupport) -> None:
    idx = _ifindex(ns, "v0")
    before = _only_napi(ns)
    if support.napi_set:
        napi_set(before.id, netns=ns, defer_hard_irqs=before.defer_hard_irqs + 5)
        assert napi_get(before.id, netns=ns).defer_hard_irqs == before.defer_hard_irqs + 5
    _ip("-n", ns, "link", "set", "v0", "down")
    assert find_napi(idx, None, netns=ns) is None  # a down device has no NAPIs
    _ip("-n", ns, "link", "set", "v0", "up")
    after = find_napi(before.key.ifindex, before.key.irq, netns=ns)
    assert after is not None and after.key == before.key
    assert after.id != before.id  # the reason NAPIs are keyed by (ifindex, irq)
    if support.napi_set:
        # veth adds its NAPIs without netif_napi_add_config(): the per-NAPI value is
        # gone, the NAPI starts again from the device-wide napi_defer_hard_irqs
        assert after.defer_hard_irqs == before.defer_hard_irqs


@pytest.mark.netns
def test_ambiguous_irqless_napis_are_refused(support: NetdevSupport) -> None:
    if not support.napi_get or shutil.which("ethtool") is None:
        pytest.skip("needs napi-get and ethtool")
    name = _make_ns(queues=2)
    try:
        idx = _ifindex(name, "v0")
        napis = napi_list(idx, netns=name)
        assert len(napis) == 2 and all(n.irq is None for n in napis)
        with pytest.raises(ValueError, match="matches 2 NAPIs"):
            find_napi(idx, None, netns=name)
    finally:
        _del_ns(name)
