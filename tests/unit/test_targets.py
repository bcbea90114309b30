"""Typed knob targets (agentlatd/kernel/targets.py): one format, one parse, a round trip
for every kind, the kernel's device-name rules, and the registry agreeing with them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentlatd import knobset
from agentlatd.apply import knobs
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import (
    KIND,
    PID_MAX,
    BlockTarget,
    CpuTarget,
    DaemonTarget,
    DeviceTarget,
    FileTarget,
    IrqTarget,
    NapiTarget,
    QueueTarget,
    SysctlTarget,
    TargetKey,
    TaskTarget,
    _parse,
    format_target,
    parse_target,
)
from agentlatd.sample.tasks import ThreadId

# Names net/core/dev.c dev_valid_name() accepts: anything but '/', ':', whitespace,
# "." and "..", 1..15 bytes. Real ones: OpenWrt "br-lan", veth peers, VLANs
# ("eth0.100"), systemd predictable names, a UTF-8 name (6 bytes).
ODD_NETDEVS = ("br-lan", "veth@1", "eth0.100", "wlp0s20f3", "abcdefghijklmno", "ünï", "x",
               "#tun", "a..b", "...", "eth0!", "bond0-rx")

# (knob, key, the journal's string form)
CASES: list[tuple[str, TargetKey, str]] = [
    (KnobName.IRQ_AFFINITY, IrqTarget(0), "0"),
    (KnobName.IRQ_AFFINITY, IrqTarget(45), "45"),
    (KnobName.CPU_PM_QOS_RESUME_LATENCY_US, CpuTarget(3), "3"),
    (KnobName.NET_RPS_CPUS, QueueTarget("eth0", "rx", 3), "eth0/rx-3"),
    (KnobName.NET_RPS_FLOW_CNT, QueueTarget("br-lan", "rx", 0), "br-lan/rx-0"),
    (KnobName.NET_XPS_CPUS, QueueTarget("veth@1", "tx", 15), "veth@1/tx-15"),
    (KnobName.NET_THREADED, DeviceTarget("eth0.100"), "eth0.100"),
    (KnobName.NET_NAPI_DEFER_HARD_IRQS, DeviceTarget("wlp0s20f3"), "wlp0s20f3"),
    (KnobName.NET_GRO_FLUSH_TIMEOUT, DeviceTarget("abcdefghijklmno"), "abcdefghijklmno"),
    (KnobName.NET_COALESCE, DeviceTarget("ens5"), "ens5"),
    (KnobName.NAPI_CONFIG, NapiTarget("ens5", "irq", 45), "ens5/irq45"),
    (KnobName.NAPI_CONFIG, NapiTarget("veth0", "queue", 2), "veth0/queue2"),
    (KnobName.NAPI_CONFIG, NapiTarget("ens5", "napi", 0), "ens5/napi0"),
    (KnobName.BLOCK_RQ_AFFINITY, BlockTarget("nvme0n1"), "nvme0n1"),
    (KnobName.BLOCK_RQ_AFFINITY, BlockTarget("cciss!c0d0"), "cciss!c0d0"),  # '/' in sysfs
    (KnobName.SYSCTL, SysctlTarget("net.core.netdev_budget_usecs"), "net.core.netdev_budget_usecs"),
    (KnobName.TASK_AFFINITY, TaskTarget(1234, 98765, 1240), "1234:98765:1240"),
    (KnobName.TASK_NICE, TaskTarget(1, 0, 1), "1:0:1"),
    (KnobName.TASK_IOPRIO, TaskTarget(4194303, 18446744073709551615, 4194303),
     "4194303:18446744073709551615:4194303"),
    (KnobName.IRQBALANCE_BANNED_CPUS, DaemonTarget("irqbalance"), "irqbalance"),
    (KnobName.IRQBALANCE_BANNED_IRQS, DaemonTarget("irqbalance"), "irqbalance"),
    (KnobName.IRQBALANCE_ENV_BANNED_CPUS, FileTarget("/etc/default/irqbalance"),
     "/etc/default/irqbalance"),
    (KnobName.IRQBALANCE_ENV_BANNED_CPUS, FileTarget("/etc/sysconfig/irqbalance"),
     "/etc/sysconfig/irqbalance"),
]


@pytest.mark.parametrize(("knob", "key", "text"), CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_round_trip(knob: str, key: TargetKey, text: str) -> None:
    assert format_target(key) == text
    assert parse_target(knob, text) == key
    assert parse_target(knob, format_target(key)) == key


def test_every_kind_and_every_shipped_knob_is_covered() -> None:
    assert {type(k) for _, k, _ in CASES} == set(KIND.values())
    assert {str(k) for k, _, _ in CASES} == {str(k) for k in KnobName}


def test_every_registered_knob_has_a_target_kind() -> None:
    """A knob added to the registry without a target kind fails here, not in a tick."""
    assert knobset.MODULES  # every knob registered
    assert sorted(knobs.REGISTRY) == sorted(KIND)


@pytest.mark.parametrize(("knob", "key", "text"), CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_the_registry_accepts_every_formatted_target(knob: str, key: TargetKey, text: str) -> None:
    assert knobset.MODULES  # every knob registered
    knobs.get(knob).check_target(format_target(key))


@pytest.mark.parametrize("dev", ODD_NETDEVS)
def test_odd_but_valid_device_names_round_trip_in_every_device_kind(dev: str) -> None:
    for knob, key in ((KnobName.NET_THREADED, DeviceTarget(dev)),
                      (KnobName.NET_RPS_CPUS, QueueTarget(dev, "rx", 7)),
                      (KnobName.NET_XPS_CPUS, QueueTarget(dev, "tx", 0)),
                      (KnobName.NAPI_CONFIG, NapiTarget(dev, "irq", 128)),
                      (KnobName.NAPI_CONFIG, NapiTarget(dev, "queue", 1))):
        assert parse_target(knob, format_target(key)) == key


# names the kernel refuses (dev_valid_name): a ':' (legacy alias syntax), whitespace,
# '/', "." / "..", empty, 16 bytes and more (IFNAMSIZ - 1 = 15)
BAD_NETDEVS = ("eth0:1", "my nic", "tab\tname", "new\nline", "a/b", ".", "..", "",
               "abcdefghijklmnop", "ünïcödé-lông")


@pytest.mark.parametrize("dev", BAD_NETDEVS)
def test_device_names_the_kernel_refuses_are_refused_both_ways(dev: str) -> None:
    for knob, key, text in ((KnobName.NET_THREADED, DeviceTarget(dev), dev),
                            (KnobName.NET_RPS_CPUS, QueueTarget(dev, "rx", 0), f"{dev}/rx-0"),
                            (KnobName.NAPI_CONFIG, NapiTarget(dev, "irq", 1), f"{dev}/irq1")):
        with pytest.raises(ValueError, match=r"network device name|bad"):
            format_target(key)
        with pytest.raises(ValueError, match=r"network device name|bad"):
            parse_target(knob, text)


@pytest.mark.parametrize(("knob", "text"), [
    (KnobName.IRQ_AFFINITY, "-1"), (KnobName.IRQ_AFFINITY, "45 "), (KnobName.IRQ_AFFINITY, "x"),
    (KnobName.CPU_PM_QOS_RESUME_LATENCY_US, "cpu3"),
    (KnobName.NET_RPS_CPUS, "eth0/tx-0"),  # rps is per rx queue
    (KnobName.NET_XPS_CPUS, "eth0/rx-0"),
    (KnobName.NET_RPS_CPUS, "eth0"), (KnobName.NET_RPS_CPUS, "eth0/rx-"),
    (KnobName.NAPI_CONFIG, "eth0/irq"), (KnobName.NAPI_CONFIG, "eth0/poll3"),
    (KnobName.BLOCK_RQ_AFFINITY, "nvme0n1/queue"), (KnobName.SYSCTL, "kernel"),
    (KnobName.SYSCTL, "net/core/netdev_budget"),
    (KnobName.TASK_AFFINITY, "1234:5"), (KnobName.TASK_AFFINITY, "0:5:1"),
    (KnobName.TASK_AFFINITY, "1234:5:4194304"), (KnobName.TASK_AFFINITY, "a:b:c"),
    (KnobName.IRQBALANCE_BANNED_CPUS, "irq balance"),
])
def test_malformed_targets_are_refused_with_a_sentence(knob: str, text: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_target(knob, text)
    assert repr(text) in str(ei.value)


def test_a_number_is_read_by_its_knob() -> None:
    """"45" is IRQ 45 or CPU 45: the string form is only read back with its knob."""
    assert parse_target(KnobName.IRQ_AFFINITY, "45") == IrqTarget(45)
    assert parse_target(KnobName.CPU_PM_QOS_RESUME_LATENCY_US, "45") == CpuTarget(45)
    with pytest.raises(KeyError, match="no target syntax"):
        parse_target("vendor.knob", "45")


def test_a_key_that_cannot_read_back_is_not_formatted() -> None:
    with pytest.raises(ValueError):
        format_target(IrqTarget(-1))
    with pytest.raises(ValueError):
        format_target(TaskTarget(0, 1, 1))
    with pytest.raises(ValueError):
        format_target(SysctlTarget("Net.core"))


@given(st.one_of(
    st.builds(IrqTarget, st.integers(-2, 10 ** 10)),
    st.builds(CpuTarget, st.integers(-2, 10 ** 10)),
    st.builds(TaskTarget, st.integers(-2, PID_MAX + 2), st.integers(-2, 10 ** 21),
              st.integers(-2, PID_MAX + 2))))
def test_numeric_keys_format_as_their_parse_back_says(key: TargetKey) -> None:
    """format_target's shortcut for number-only keys (no parse-back) formats exactly
    the keys the parse-back accepts, and refuses the rest."""
    text = str(key.irq) if isinstance(key, IrqTarget) else str(key.cpu) \
        if isinstance(key, CpuTarget) else f"{key.pid}:{key.starttime}:{key.tid}"
    try:
        back: TargetKey | None = _parse(type(key), text, None)
    except ValueError:
        back = None
    if back == key:
        assert format_target(key) == text
    else:
        with pytest.raises(ValueError):
            format_target(key)


def test_thread_ids_use_the_one_task_syntax() -> None:
    t = ThreadId(1234, 98765, 1240)
    assert t.target == format_target(TaskTarget(1234, 98765, 1240))
    assert ThreadId.parse(t.target) == t
    assert parse_target(KnobName.TASK_AFFINITY, t.target) == TaskTarget(1234, 98765, 1240)


@pytest.mark.parametrize("text", ["etc/default/irqbalance", "/etc/../etc/default/irqbalance",
                                  "/etc//default/irqbalance", "//etc/default/irqbalance",
                                  "/etc/default/irq\nbalance", "/etc/default/irqbalance/", ""])
def test_an_environment_file_target_is_an_absolute_normalised_path(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(KnobName.IRQBALANCE_ENV_BANNED_CPUS, text)
