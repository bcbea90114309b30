"""netdevsim: a NIC whose every ethtool/NAPI knob can be driven without hardware."""

from __future__ import annotations

import pathlib
import socket
import subprocess

import guestlib as g
import pytest

pytestmark = pytest.mark.vm


def test_netdevsim_device_has_the_requested_queues(netdevsim) -> None:
    ifname = netdevsim(ports=1, queues=4)
    q = pathlib.Path(f"/sys/class/net/{ifname}/queues")
    assert len(list(q.glob("rx-*"))) == 4
    assert len(list(q.glob("tx-*"))) == 4
    assert "netdevsim" in g.ethtool("-i", ifname)


def test_netdevsim_coalescing_set_and_read_back(netdevsim) -> None:
    ifname = netdevsim()
    g.run(
        "ethtool",
        "-C",
        ifname,
        "rx-usecs",
        "77",
        "tx-usecs",
        "33",
        "rx-frames",
        "12",
        "tx-frames",
        "9",
        "adaptive-rx",
        "on",
    )
    c = g.ethtool_coalesce(ifname)
    got = {k: c[k] for k in ("rx-usecs", "tx-usecs", "rx-frames", "tx-frames", "adaptive-rx")}
    assert got == {
        "rx-usecs": "77",
        "tx-usecs": "33",
        "rx-frames": "12",
        "tx-frames": "9",
        "adaptive-rx": "on",
    }
    g.run("ethtool", "-C", ifname, "rx-usecs", "0")
    assert g.ethtool_coalesce(ifname)["rx-usecs"] == "0"


def test_netdevsim_napis_exist_only_while_the_link_is_up(netdevsim) -> None:
    if not g.kernel_at_least(6, 9):
        pytest.skip("netdev napi-get needs 6.9")
    ifname = netdevsim(queues=4)
    idx = socket.if_nametoindex(ifname)
    assert g.napi_dump(idx) == []
    g.run("ip", "link", "set", ifname, "up")
    napis = g.napi_dump(idx)
    print(f"{ifname} napis: {napis}")
    assert len(napis) == 4
    assert all(n["ifindex"] == idx and n["id"] > 0 for n in napis)


def test_netdevsim_threaded_napi_starts_one_kthread_per_napi(netdevsim) -> None:
    if not g.kernel_at_least(6, 12):
        pytest.skip("netdevsim threaded NAPI fails on 6.1; works from 6.12")
    ifname = netdevsim(queues=4)
    g.run("ip", "link", "set", ifname, "up")
    threaded = pathlib.Path(f"/sys/class/net/{ifname}/threaded")
    g.write_once(threaded, "1")
    assert threaded.read_text().strip() == "1"
    comms = subprocess.run(["ps", "-eo", "comm="], capture_output=True, text=True).stdout
    kthreads = [c for c in comms.split() if c.startswith(f"napi/{ifname}-")]
    assert len(kthreads) == 4, kthreads
