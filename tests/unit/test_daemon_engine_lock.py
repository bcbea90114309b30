"""The main loop and the tuner's hold of the engine lock (daemon.py _engine_lock).

A registration that meets the tuner holding the lock (its apply and drift check)
waits for the lock and is placed the moment the tuner lets go; before, the turn
gave up and retried RETRY (5 ms) later, whatever the tuner had left to do. A turn
with nothing to answer (a tick alone) still does not wait.
"""

from __future__ import annotations

import pathlib
import threading
import time

import pytest
from test_tick import copy_tree

from agentlatd import daemon as daemon_mod
from agentlatd import policy as policy_mod
from agentlatd.daemon import Daemon
from agentlatd.sysfs.pacing import PACER


def _daemon(tmp_path: pathlib.Path) -> Daemon:
    tree = copy_tree(tmp_path)
    return Daemon(policy_mod.default(), root=str(tree), state_dir=str(tmp_path / "state"),
                  socket_path=str(tmp_path / "sock"), tune_devices=False)


def _tuner_holds(d: Daemon, release: threading.Event, held: threading.Event,
                 released_at: list[float]) -> threading.Thread:
    def tuner() -> None:
        with d.engine.hold():
            held.set()
            release.wait(10)
            released_at.append(time.monotonic())

    t = threading.Thread(target=tuner, daemon=True)
    t.start()
    assert held.wait(5)
    return t


def test_a_waiting_registration_takes_the_lock_when_the_tuner_lets_go(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a bound no loaded machine reaches: the lock comes when the tuner lets go, not after it
    monkeypatch.setattr(daemon_mod, "RETRY", 60.0)
    d = _daemon(tmp_path)
    release, held = threading.Event(), threading.Event()
    released_at: list[float] = []
    try:
        t = _tuner_holds(d, release, held, released_at)
        d.handlers.waiting.append(object())  # type: ignore[arg-type]  # a register to answer
        threading.Timer(0.05, release.set).start()
        with d._engine_lock() as got:
            got_at = time.monotonic()
            assert got
            assert released_at and got_at >= released_at[0]
        t.join(5)
    finally:
        release.set()
        PACER.waiting()
        d.engine.close()


def test_a_tick_alone_does_not_wait_for_the_lock(tmp_path: pathlib.Path) -> None:
    d = _daemon(tmp_path)
    release, held = threading.Event(), threading.Event()
    released_at: list[float] = []
    try:
        t = _tuner_holds(d, release, held, released_at)
        with d._engine_lock() as got:
            assert not got
            assert not released_at  # the tuner still holds it: the turn went on without
        release.set()
        t.join(5)
    finally:
        release.set()
        PACER.waiting()
        d.engine.close()
