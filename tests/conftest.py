"""Shared test helpers: fixture machines and real network namespaces."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "machines"


def fixture_machines() -> list[pathlib.Path]:
    """Every recorded/hand-written machine tree (each has proc/ and sys/)."""
    if not FIXTURES.is_dir():
        return []
    return sorted(p for p in FIXTURES.iterdir() if (p / "proc").is_dir())


@pytest.fixture
def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
