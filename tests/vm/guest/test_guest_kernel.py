"""Which kernel the guest booted, and which netdev netlink ops it has."""

from __future__ import annotations

import os

import guestlib as g
import pytest

pytestmark = pytest.mark.vm


def test_guest_runs_the_labs_kernel_on_4_cpus() -> None:
    release = os.uname().release
    print(f"guest kernel: {release}")
    expect = os.environ.get("AGENTLATD_VM_EXPECT_KV")  # set by run_tier.sh from lab.env
    if expect:
        assert release == expect
    assert os.cpu_count() == int(os.environ.get("AGENTLATD_VM_SMP", "4"))
    assert sorted(os.sched_getaffinity(0)) == list(range(os.cpu_count() or 0))


def test_netdev_netlink_family_has_napi_get_from_6_9_and_napi_set_from_6_13() -> None:
    # include/uapi/linux/netdev.h: NETDEV_CMD_NAPI_GET = 11 (6.9), NETDEV_CMD_NAPI_SET = 14
    # (6.13).  agentlatd reads NAPI ids through napi-get and sets per-NAPI knobs via napi-set.
    fam = g.genl_family("netdev")
    if not g.kernel_at_least(6, 5):
        assert fam is None
        return
    assert fam is not None, "kernel >= 6.5 without the netdev generic netlink family"
    _, ops = fam
    print(f"netdev family ops: {sorted(ops)}")
    assert (g.NETDEV_CMD_NAPI_GET in ops) == g.kernel_at_least(6, 9)
    assert (g.NETDEV_CMD_NAPI_SET in ops) == g.kernel_at_least(6, 13)
