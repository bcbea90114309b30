"""CpuSet parses and prints both kernel forms (cpulist and hex mask)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentlatd.cpuset import CpuSet, CpuSetError


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("0", {0}),
        ("0-3,8", {0, 1, 2, 3, 8}),
        ("0-15:4", {0, 4, 8, 12}),
        ("1,3,5-6\n", {1, 3, 5, 6}),
    ],
)
def test_parse_list(text: str, cpus: set[int]) -> None:
    assert CpuSet.parse_list(text) == cpus


@pytest.mark.parametrize("bad", ["a", "3-1", "1,,2", "-1", "0-", "0-3:0"])
def test_parse_list_rejects(bad: str) -> None:
    with pytest.raises(CpuSetError):
        CpuSet.parse_list(bad)


@pytest.mark.parametrize(
    ("mask", "cpus"),
    [
        ("0", set()),
        ("f", {0, 1, 2, 3}),
        ("00000001,00000000", {32}),
        ("ff,00000000", set(range(32, 40))),
        ("00000000,00000000,00000000,00000003", {0, 1}),
    ],
)
def test_parse_mask(mask: str, cpus: set[int]) -> None:
    assert CpuSet.parse_mask(mask) == cpus


def test_mask_width_follows_possible_cpus() -> None:
    # the kernel prints one 32-bit word per 32 possible CPUs
    assert CpuSet({0}).to_mask(64) == "00000000,00000001"
    assert CpuSet({0}).to_mask(4) == "1"  # as /sys/.../rps_cpus prints on a 4-CPU host
    assert CpuSet({0, 1}).to_mask(2) == "3"
    assert CpuSet().to_mask(2) == "0"
    assert CpuSet(range(40)).to_mask(40) == "ff,ffffffff"


def test_algebra_keeps_type() -> None:
    a = CpuSet({0, 1, 2}) - {1}
    assert isinstance(a, CpuSet) and a.to_list() == "0,2"
    assert isinstance(CpuSet({0}) | {3}, CpuSet)
    assert isinstance(CpuSet({0, 3}) & {3}, CpuSet)


@given(st.frozensets(st.integers(min_value=0, max_value=300), max_size=80))
def test_roundtrip(cpus: frozenset[int]) -> None:
    s = CpuSet(cpus)
    assert CpuSet.parse_list(s.to_list()) == s
    assert CpuSet.parse_mask(s.to_mask(301)) == s
